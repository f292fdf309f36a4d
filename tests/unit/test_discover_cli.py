"""`kubeha inventory import|show`: thin commands over the importers; errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys

from test_inventory_import import KUBEASZ_3, KUBESPRAY_INI
from typer.testing import CliRunner

from kubeha.cli.main import app
from kubeha.inventory import import_kubeasz, import_kubespray, load_inventory

runner = CliRunner()


def test_import_kubeasz_writes_what_the_importer_builds(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text(KUBEASZ_3)
    output = tmp_path / "cluster.yaml"
    result = runner.invoke(app, ["inventory", "import", "kubeasz", str(hosts), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert load_inventory(output).cluster == import_kubeasz(KUBEASZ_3, str(hosts)).cluster
    again = runner.invoke(app, ["inventory", "import", "kubeasz", str(hosts), "-o", str(output)])
    assert "exists: pass --force" in str(again.exception)


def test_import_kubespray_merges_group_vars_files_in_order(tmp_path):
    ini = tmp_path / "inventory.ini"
    ini.write_text(KUBESPRAY_INI)
    (tmp_path / "all.yml").write_text("kube_version: 1.28.0\nkube_apiserver_port: 6443\n")
    (tmp_path / "k8s.yml").write_text("kube_version: 1.29.3\n")
    result = runner.invoke(app, ["inventory", "import", "kubespray", str(ini), "--group-vars",
                                 str(tmp_path / "all.yml"), "--group-vars", str(tmp_path / "k8s.yml")])
    assert result.exit_code == 0, result.output
    expected = import_kubespray(KUBESPRAY_INI, str(ini), group_vars={"kube_version": "1.29.3"})
    printed = tmp_path / "printed.yaml"
    printed.write_text(result.stdout)
    assert load_inventory(printed).cluster == expected.cluster


def test_show_validates_and_prints_json(tmp_path):
    path = tmp_path / "cluster.yaml"
    (tmp_path / "hosts").write_text(KUBEASZ_3)
    assert runner.invoke(app, ["inventory", "import", "kubeasz", str(tmp_path / "hosts"), "-o", str(path)]).exit_code == 0
    shown = runner.invoke(app, ["inventory", "show", "-i", str(path), "--json"])
    assert shown.exit_code == 0, shown.output
    assert [h["name"] for h in json.loads(shown.stdout)["hosts"]] == [
        h.name for h in load_inventory(path).cluster.hosts]
    table = runner.invoke(app, ["inventory", "show", "-i", str(path)])
    assert table.exit_code == 0 and "master-01" in table.stdout


def test_a_bad_inventory_is_one_error_line(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("hosts: [{name: Bad_Name, address: 10.0.0.1}]\n")
    done = subprocess.run([sys.executable, "-m", "kubeha.cli", "inventory", "show", "-i", str(path)],
                          capture_output=True, text=True, timeout=60, env={"COLUMNS": "500"})
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and str(path) in done.stderr
