"""Offline validation of a bioimage.io package with bioimageio.core's `test_model`."""

from __future__ import annotations

import logging
import contextlib
import io
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import ZooValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooSummary:
    """Result of `test_model` on a package.

    Attributes:
        status: "passed" or "failed" (bioimageio.core's overall status).
        formats: status per weights format, e.g. {"onnx": "passed", "torchscript": "passed"}.
        tests: (name, status) of every sub-test bioimageio.core ran.
        errors: error messages of failed sub-tests.
    """

    path: Path
    status: str
    formats: dict[str, str]
    tests: tuple[tuple[str, str], ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed" and bool(self.formats) and all(s == "passed" for s in self.formats.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["passed"] = self.passed
        return d


def check_zip_members(path: Path) -> list[str]:
    """Names inside a zip, refusing absolute paths and `..` (zip-slip).

    Raises:
        ZooValidationError: not a zip, or an unsafe member name.
    """
    if not zipfile.is_zipfile(path):
        raise ZooValidationError(f"{path}: not a zip file; give a bioimage.io package (.zip)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    for name in names:
        p = PurePosixPath(name.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":"):
            raise ZooValidationError(f"{path}: unsafe member name '{name}' (absolute or '..'); refusing to open the package")
    return names


def safe_extract(path: str | Path, dest: str | Path) -> Path:
    """Unpack a package after `check_zip_members`; returns `dest`."""
    path, dest = Path(path), Path(dest)
    check_zip_members(path)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(dest)
    return dest


def _summarize(path: Path, vs, seconds: float) -> ZooSummary:
    formats: dict[str, str] = {}
    tests, errors, warnings = [], [], []
    for d in vs.details:
        tests.append((d.name, d.status))
        loc = tuple(d.loc or ())
        if len(loc) >= 2 and loc[0] == "weights":
            wf = str(loc[1])
            formats[wf] = "failed" if d.status == "failed" or formats.get(wf) == "failed" else "passed"
        errors += [f"{d.name}: {e.msg}" for e in d.errors]
        warnings += [f"{d.name}: {w.msg}" for w in d.warnings if getattr(w, "severity", 30) >= 30]
    versions = {p.name: str(p.version) for p in getattr(vs, "env", ()) if p.name.startswith("bioimageio")}
    return ZooSummary(path, str(vs.status), formats, tuple(tests), tuple(errors), tuple(warnings), versions, seconds)


def validate_package(path: str | Path, *, weight_format: str | None = None, devices: list[str] | None = None) -> ZooSummary:
    """Run bioimageio.core's `test_model` on a package, offline.

    Args:
        path: the package .zip (or an rdf.yaml).
        weight_format: test only this format ("onnx", "torchscript"); all if None.
        devices: e.g. ["cpu"]; bioimageio.core's default if None.

    Returns:
        The summary; check `.passed`.

    Raises:
        ZooValidationError: missing or unsafe file (a failed test is reported in the summary, not raised).
    """
    path = Path(path)
    if not path.exists():
        raise ZooValidationError(f"{path}: no such package; give the .zip written by `probda export --format bioimageio`")
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        check_zip_members(path)
    from bioimageio.core import test_model

    t0 = time.perf_counter()
    try:
        with _quiet_onnxruntime():
            vs = test_model(path, weight_format=weight_format, devices=devices)
    except Exception as e:  # bioimageio raises for unreadable sources
        raise ZooValidationError(f"{path}: bioimageio.core could not load the package ({type(e).__name__}: {str(e)[:300]})") from None
    summary = _summarize(path, vs, time.perf_counter() - t0)
    log.info("%s: bioimageio test %s %s (%.1fs)", path, summary.status, summary.formats, summary.seconds)
    return summary


@contextlib.contextmanager
def _quiet_onnxruntime():
    """bioimageio.core asks onnxruntime for every available provider; without CUDA libraries
    onnxruntime-gpu logs load errors and prints fallback notices. The CPU fallback is what runs,
    which the summary reports, so the noise is dropped."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(2)


def require_passed(summary: ZooSummary) -> ZooSummary:
    """Raise ZooValidationError naming the failed sub-tests unless `summary.passed`."""
    if summary.passed:
        return summary
    failed = [f"{n}" for n, s in summary.tests if s == "failed"] or ["no weights format was tested"]
    first = summary.errors[0].splitlines()[0][:300] if summary.errors else "see `bioimageio test` output"
    raise ZooValidationError(
        f"{summary.path}: bioimageio.core test_model {summary.status}: {'; '.join(failed)} ({first}); "
        f"run `bioimageio test {summary.path}` for details"
    )
