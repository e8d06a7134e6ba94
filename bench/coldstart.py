"""Workload 6: cold start (import time of the app module) and the Lambda ``deployment.zip`` size.

Both against a hello-world Chalice app written to a temporary directory, in the same run:

* wall time of a fresh ``python -c "import app"`` (interpreter start included), and the import
  alone measured inside that interpreter; runs alternate between the two apps; medians;
* ``deployment.zip``: the app packaged by ``deploy/package.py`` when present (else
  ``chalice package``), the hello-world app by ``chalice package``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, ROOT, Section, fmt, log, median, ratio

HELLO_APP = '''from chalice import Chalice

app = Chalice(app_name="hello")


@app.route("/")
def index():
    return {"hello": "world"}
'''
HELLO_CONFIG = '{"version": "2.0", "app_name": "hello", "stages": {"dev": {}}}\n'
IMPORT = ("import time; t = time.perf_counter(); import app; "
          "print(time.perf_counter() - t)")
#: What the first invocation imports before any handler code runs: the wiring (chalicelib.runtime,
#: botocore's exceptions, the stores' base) and then Powertools' JSON logging and EMF metrics
#: (chalicelib/observability.py, imported lazily by app.py's middleware, never by the import).
IMPORT_FIRST_CALL = ("import time; t = time.perf_counter(); import app, chalicelib.runtime; "
                     "print(time.perf_counter() - t)")
IMPORT_OBSERVED = (
    "import time; t = time.perf_counter(); import app, chalicelib.runtime; "
    "from chalicelib.observability import install; "
    "install(app.app.log, chalicelib.runtime.recorder()); print(time.perf_counter() - t)")
PACKAGE_TIMEOUT = 180


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    return env


def _import_once(cwd: str, code: str = IMPORT) -> tuple[float, float]:
    """(process wall seconds, in-process import seconds)."""
    started = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", code], cwd=cwd, env=_env(), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return time.perf_counter() - started, float(out.strip().splitlines()[-1])


def _package(cmd: list[str], cwd: str, outdir: Path) -> tuple[int | None, str]:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=PACKAGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {PACKAGE_TIMEOUT} s"
    path = outdir / "deployment.zip"
    if proc.returncode != 0 or not path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"failed (exit {proc.returncode}): {tail[0][:160]}"
    return path.stat().st_size, "ok"


#: Issue 7: ``import app`` wall time against a hello-world Chalice app.
WALL_GOAL = 1.2
#: Issue 14: the module import against the hello-world's.
MODULE_GOAL = 1.8


def _verdict(value: float, goal: float) -> str:
    return "met" if value <= goal else "NOT met"


def run(quick: bool) -> Section:
    runs = 5 if quick else 15
    chalice = str(Path(PYTHON).with_name("chalice"))
    with tempfile.TemporaryDirectory(prefix="bench-hello-") as tmp:
        hello = Path(tmp) / "hello"
        (hello / ".chalice").mkdir(parents=True)
        (hello / "app.py").write_text(HELLO_APP)
        (hello / ".chalice" / "config.json").write_text(HELLO_CONFIG)
        (hello / "requirements.txt").write_text("")
        log(f"cold start: {runs} imports of each app")
        for cwd in (ROOT, str(hello)):  # warm the page cache and bytecode
            _import_once(cwd)
        app_wall, app_imp, hello_wall, hello_imp = [], [], [], []
        observed_wall, observed_imp, first_imp = [], [], []
        for _ in range(runs):
            w, i = _import_once(ROOT)
            app_wall.append(w)
            app_imp.append(i)
            w, i = _import_once(ROOT, IMPORT_OBSERVED)
            observed_wall.append(w)
            observed_imp.append(i)
            first_imp.append(_import_once(ROOT, IMPORT_FIRST_CALL)[1])
            w, i = _import_once(str(hello))
            hello_wall.append(w)
            hello_imp.append(i)

        log("packaging deployment.zip (app and hello-world)")
        app_out, hello_out = Path(tmp) / "app-pkg", Path(tmp) / "hello-pkg"
        if (Path(ROOT) / "deploy" / "package.py").exists():
            how = "`python -m deploy.package --stage dev`"
            app_cmd = [PYTHON, "-m", "deploy.package", "--stage", "dev", str(app_out)]
        else:
            how = "`chalice package --stage dev`"
            app_cmd = [chalice, "package", "--stage", "dev", str(app_out)]
        app_size, app_status = _package(app_cmd, ROOT, app_out)
        hello_size, hello_status = _package([chalice, "package", str(hello_out)], str(hello),
                                            hello_out)

    aw, hw = median(app_wall), median(hello_wall)
    ai, hi = median(app_imp), median(hello_imp)
    section = Section(
        "6. Cold start and package size",
        ["measure", "baseline: hello-world Chalice app", "this app", "ratio", "goal"],
    )
    # Two goals: issue 7's on the wall time of `import app` (1.2x) and issue 14's on the module
    # import (1.8x, once Powertools logging and metrics were added to the first invocation).
    section.rows.append(["`python -c \"import app\"` wall ms (fresh interpreter, median)",
                         fmt(hw * 1000), fmt(aw * 1000), ratio(aw, hw),
                         f"<= 1.20x (issue 7) {_verdict(aw / hw, WALL_GOAL)}"])
    section.rows.append(["import of the module alone, ms (median)", fmt(hi * 1000, 2),
                         fmt(ai * 1000, 2), ratio(ai, hi),
                         f"<= 1.80x (issue 14) {_verdict(ai / hi, MODULE_GOAL)}"])
    ow, oi, fi = median(observed_wall), median(observed_imp), median(first_imp)
    section.rows.append(["first invocation's imports (app + chalicelib.runtime), ms (median)",
                         fmt(hi * 1000, 2), fmt(fi * 1000, 2), ratio(fi, hi), ""])
    section.rows.append(["... plus Powertools JSON logs and EMF metrics set up, ms (median; "
                         f"Powertools adds {fmt((oi - fi) * 1000, 1)} ms)", fmt(hi * 1000, 2),
                         fmt(oi * 1000, 2), ratio(oi, hi), ""])

    def size(value: int | None, status: str) -> str:
        return f"{value / 1024:,.1f} KiB" if value is not None else status

    section.rows.append(["`deployment.zip`", size(hello_size, hello_status),
                         size(app_size, app_status),
                         ratio(float(app_size), float(hello_size))
                         if app_size and hello_size else "n/a", ""])
    section.notes.append(
        f"{runs} alternating runs of each; the app's package built by {how}, the hello-world's "
        "by `chalice package` (boto3/botocore are provided by the Lambda runtime and not "
        "vendored).")
    section.notes.append(
        "What `import app` does beyond Chalice, on purpose: it validates the settings (a "
        "misconfigured function fails at init with a clear error, not on its first message), "
        "installs log redaction before anything logs (its patterns are compiled then), and "
        "registers the blueprint's handlers; `dataclasses` comes with the settings. The first "
        "invocation needs all of it (and boto3 imports `dataclasses` and `inspect` anyway), so "
        "deferring it would move the time, not save it: the first-invocation rows are the "
        "total. boto3, PyJWT and Powertools are not imported by `import app`.")
    section.data = {"app_wall": aw, "hello_wall": hw, "observed_wall": ow, "app_size": app_size,
                    "hello_size": hello_size}
    return section
