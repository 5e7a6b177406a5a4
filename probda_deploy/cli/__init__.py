"""The `probda` command line (Typer + rich). Commands parse, make one library call, render."""
