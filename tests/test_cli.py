import subprocess

from support import rctmon_command

from rctmon import __version__


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(rctmon_command(*args), capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"rctmon {__version__}"


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("device:\n  host: 192.0.2.7\ninfluxdb:\n  token: very-secret\n")
    path.chmod(0o600)
    result = run("-c", str(path), "check-config")
    assert result.returncode == 0, result.stderr
    assert "host: 192.0.2.7" in result.stdout
    assert "very-secret" not in result.stdout + result.stderr
    assert "token: '********'" in result.stdout


def test_check_config_fails_naming_the_key(tmp_path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("prometheus:\n  bind_prot: 9831\n")
    result = run("-c", str(path), "check-config")
    assert result.returncode == 2
    assert "prometheus.bind_prot: unknown key (did you mean prometheus.bind_port?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_a_clear_error(tmp_path) -> None:
    result = run("-c", str(tmp_path / "nope.yml"), "check-config")
    assert result.returncode == 2 and "cannot read configuration file" in result.stderr


def test_invalid_logging_section_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("logging:\n  version: 1\n  handlers:\n    h:\n      class: no.such.Handler\n")
    result = run("-c", str(path), "check-config")
    assert result.returncode == 2 and "logging: invalid configuration" in result.stderr
