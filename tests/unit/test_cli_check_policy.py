"""quota-service check-policy: a summary and exit 0, or the errors on stderr and exit 1;
never a traceback, whatever the files hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quota_service.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ALPHA = ROOT / "policies" / "alpha.yaml"
MULTI = ROOT / "tests" / "fixtures" / "policies" / "multi"


def test_valid_policy_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-policy", str(ALPHA)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("policy version   ")
    assert "tier free_alpha (default): Free Alpha" in out
    assert "    cost_usd  month   $10.00        $8.00       $9.50" in out


def test_shipped_policies_directory_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-policy", str(ALPHA.parent)]) == 0
    assert f"files            {ALPHA}\n" in capsys.readouterr().out


def test_invalid_policy_prints_every_error(capsys: pytest.CaptureFixture[str]) -> None:
    path = MULTI / "many_semantic_errors.yaml"
    assert main(["check-policy", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: {path}:2: default_tier: tier 'gold' is not defined under tiers (defined: free)",
        f"error: {path}:7: tiers.free.limits.tokens.day: 0.5 is not a whole number of tokens",
        f"error: {path}:8: tiers.free.thresholds: warn_at (0.80, inherited from the top-level thresholds) "
        "must not be greater than block_at (0.5)",
        f"{path}: 3 error(s)",
    ]


def test_missing_path_fails(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "tests" / "fixtures" / "policies" / "nowhere"
    assert main(["check-policy", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {path}: no such file or directory", f"{path}: 1 error(s)"]


# --- hostile input: exit 1 with file:line: key: message lines, never a traceback ------------

INVALID = ROOT / "tests" / "fixtures" / "policies" / "invalid"
HOSTILE_FIXTURES = [
    "nul_byte.yaml",
    "utf16_bom.yaml",
    "utf16_no_bom.yaml",
    "control_character.yaml",
    "surrogate_escape.yaml",
    "deep_lists.yaml",
    "deep_mappings.yaml",
    "alias_bomb.yaml",
    "long_integer_cap.yaml",
    "huge_price.yaml",
    "nan_price.yaml",
    "octal_cap.yaml",
    "binary_tag.yaml",
]


@pytest.mark.parametrize("name", HOSTILE_FIXTURES)
def test_hostile_files_give_error_lines_and_exit_1(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = INVALID / name
    assert main(["check-policy", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and "Traceback" not in err
    assert lines[-1] == f"{path}: {len(lines) - 1} error(s)"
    assert all(line.startswith(f"error: {path}:") for line in lines[:-1]), lines


def test_an_unexpected_exception_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import quota_service.policy.loader

    def broken(path: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(quota_service.policy.loader, "load_policy", broken)
    assert main(["check-policy", str(ALPHA)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {ALPHA}: internal error while checking: RuntimeError: a bug (a bug: please report it)",
        f"{ALPHA}: 1 error(s)",
    ]


def check_policy_process(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """check-policy in a child process; the timeout is a hang guard, not a speed claim."""
    return subprocess.run(
        [sys.executable, "-m", "quota_service.cli", "check-policy", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **env},
        check=False,
    )


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    done = check_policy_process(fifo)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        f"error: {fifo}: not a regular file; a policy is a YAML file or a directory of them",
        f"{fifo}: 1 error(s)",
    ]


def test_a_50_mb_file_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as sparse:
        sparse.truncate(50_000_000)
    done = check_policy_process(path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == (
        f"error: {path}: the file is 50,000,000 bytes; a policy file may be at most 1 MiB (1,048,576 bytes)"
    )


def test_the_largest_file_of_the_most_nodes_is_checked_in_bounded_memory(tmp_path: Path) -> None:
    from quota_service.policy.loader import MAX_NODES

    path = tmp_path / "wide.yaml"
    path.write_text("version:\n" + "".join(f"- {i}\n" for i in range(MAX_NODES - 10)))
    # VmHWM (the peak RSS of this process's own address space), not getrusage's ru_maxrss:
    # Linux carries the forking parent's peak over exec into ru_maxrss, so a large pytest
    # process would be measured instead of check-policy.
    probe = (
        "import sys; from quota_service.cli import main; code = main(['check-policy', sys.argv[1]]); "
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')); "
        "print(hwm.split()[1], file=sys.stderr); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    peak_kib = int(done.stderr.splitlines()[-1])
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib} KiB"  # about 80 MiB, the interpreter (36 MiB) included


def test_a_summary_the_terminal_cannot_encode_is_escaped_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(ALPHA.read_text().replace("display_name: Free Alpha", "display_name: Frée Alpha ✓", 1))
    done = check_policy_process(path, PYTHONIOENCODING="ascii")
    assert done.returncode == 0, done.stderr
    assert "tier free_alpha (default): Fr\\xe9e Alpha \\u2713" in done.stdout
