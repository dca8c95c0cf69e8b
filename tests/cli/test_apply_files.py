"""``apply -f`` with several files (``-f a -f b`` and ``-f a b``), directories and stdin; every problem of every
document of every file reported at once, each once, without a repeated prefix, and then nothing applied."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from discovery.cli import main
from tests.cli.support import environment, run


def manifest(name: str, port: int = 80, extra: str = "") -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
            f"spec:\n  selector: {{app: {name}}}\n  ports: [{{port: {port}}}]\n{extra}")


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DISCOVERY_CLUSTER_IP_RANGE", "127.250.0.0/24")
    return f"memory:///apply-{uuid.uuid4().hex[:12]}"


def applied(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> list[str]:
    assert main(["--url", url, "apply", *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out.splitlines()


def stored(capsys: pytest.CaptureFixture[str], url: str) -> str:
    assert main(["--url", url, "get", "services", "-A", "-o", "name"]) == 0
    return capsys.readouterr().out


def test_several_files_as_repeated_f_and_as_arguments(url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(manifest(f"svc-{name}"))
    a, b, c = (str(tmp_path / f"{name}.yaml") for name in ("a", "b", "c"))
    assert applied(capsys, url, "-f", a, "-f", b) == ["service/svc-a created", "service/svc-b created"]
    assert applied(capsys, url, "-f", a, b, c) == ["service/svc-a unchanged", "service/svc-b unchanged",
                                                   "service/svc-c created"]


def test_a_directory_applies_its_manifests_sorted(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "20-b.yml").write_text(manifest("svc-b"))
    (tmp_path / "10-a.yaml").write_text(manifest("svc-a") + "---\n" + manifest("svc-a2", 81))
    (tmp_path / "30-c.json").write_text('{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc-c"}, '
                                        '"spec": {"ports": [{"port": 82}]}}')
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text(manifest("svc-d"))  # not recursive, as kubectl without -R
    assert applied(capsys, url, "-f", str(tmp_path)) == [
        "service/svc-a created", "service/svc-a2 created", "service/svc-b created", "service/svc-c created"]
    assert stored(capsys, url) == "service/svc-a\nservice/svc-a2\nservice/svc-b\nservice/svc-c\n"


def test_stdin_with_a_dash(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.yaml").write_text(manifest("svc-a"))
    monkeypatch.setattr("sys.stdin", io.StringIO(manifest("svc-in")))
    assert applied(capsys, url, "-f", "-", "-f", str(tmp_path / "a.yaml")) == ["service/svc-in created",
                                                                                "service/svc-a created"]


def test_stdin_in_a_real_pipe(tmp_path: Path) -> None:
    url = f"memory:///apply-{uuid.uuid4().hex[:12]}"
    done = run("apply", "-f", "-", "--url", url, stdin=manifest("piped"), env=environment(
        DISCOVERY_CLUSTER_IP_RANGE="127.251.0.0/24"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "service/piped created\n"
    assert done.stderr == "", "an explicit --url: no warning"


BAD_A = manifest("Bad_Name", 80000, "  sessionAffinity: ClientIP\n") + "---\n" + manifest("ok-1") + "---\n" + \
    manifest("svc-x", 80, "  type: Sideways\n")
BAD_B = "apiVersion: v1\nkind: Deployment\n---\n" + manifest("ok-2", 80, "  externalIPs: [not-an-ip]\n")


def test_every_problem_of_every_file_at_once_each_once(url: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(BAD_A)
    (tmp_path / "b.yaml").write_text(BAD_B)
    (tmp_path / "c.yaml").write_text("key: [unclosed")
    (tmp_path / "good.yaml").write_text(manifest("fine"))
    assert main(["--url", url, "apply", "-f", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    a, b, c = (str(tmp_path / name) for name in ("a.yaml", "b.yaml", "c.yaml"))
    assert lines[0] == "discovery: 7 problem(s) in the manifests; nothing was applied:"
    assert lines[1:8] == [
        f"  {a}#1: spec.sessionAffinity: is not supported",
        f"  {a}#1: metadata.name: 'Bad_Name' is not a DNS-1123 label (lowercase letters, digits and '-', "
        "alphanumeric at both ends)",
        f"  {a}#1: spec.ports[0].port: 80000 is outside 1-65535",
        f"  {a}#3: spec.type: 'Sideways' is not one of ClusterIP, NodePort, LoadBalancer, ExternalName",
        f"  {b}#1: kind: 'Deployment' is not supported; only kind: Service can be applied",
        f"  {b}#2: spec.externalIPs[0]: 'not-an-ip' is not an IP address",
        f"  manifest: {c} is not valid YAML: while parsing a flow sequence in \"<unicode string>\", line 1, "
        "column 6 did not find expected ',' or ']' in \"<unicode string>\", line 2, column 1",
    ]
    assert lines[8].startswith("  (supported fields: metadata.{name,namespace,labels,annotations}")
    assert len(lines) == 9
    assert stored(capsys, url) == "", "nothing was applied, not even the good documents"


def test_the_same_file_twice_names_the_duplicate(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(manifest("twice"))
    assert main(["--url", url, "apply", "-f", str(tmp_path / "a.yaml"), str(tmp_path / "a.yaml")]) == 2
    assert "Service default/twice is defined twice" in capsys.readouterr().err


def test_unreadable_files_are_problems_too(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(manifest("ok", 0))
    (tmp_path / "empty").mkdir()
    assert main(["--url", url, "apply", "-f", str(tmp_path / "missing.yaml"), str(tmp_path / "empty"),
                 str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'missing.yaml'}: -f: cannot be read: No such file or directory" in err
    assert f"{tmp_path / 'empty'}: -f: the directory holds no *.yaml, *.yml or *.json file" in err
    assert f"{tmp_path / 'bad.yaml'}: spec.ports[0].port: 0 is outside 1-65535" in err
    assert "3 problem(s)" in err


def test_conflicts_found_while_applying_are_all_reported(url: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "owner.yaml").write_text(manifest("owner", 80, "  clusterIP: 127.250.0.7\n")
                                         + "---\n" + manifest("owner2", 80, "  clusterIP: 127.250.0.8\n"))
    applied(capsys, url, "-f", str(tmp_path / "owner.yaml"))
    (tmp_path / "thieves.yaml").write_text(manifest("thief", 80, "  clusterIP: 127.250.0.7\n")
                                           + "---\n" + manifest("thief2", 80, "  clusterIP: 127.250.0.8\n"))
    assert main(["--url", url, "apply", "-f", str(tmp_path / "thieves.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "discovery: 2 problem(s) in the manifests; nothing was applied:",
        '  spec.clusterIP: Invalid value: "127.250.0.7": 127.250.0.7 is already served by Service "default/owner" '
        '(its clusterIP) (Service "default/thief" is invalid; nothing was written)',
        '  spec.clusterIP: Invalid value: "127.250.0.8": 127.250.0.8 is already served by Service "default/owner2" '
        '(its clusterIP) (Service "default/thief2" is invalid; nothing was written)',
    ]
    assert stored(capsys, url) == "service/owner\nservice/owner2\n"
