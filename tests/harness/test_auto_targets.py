"""benchmarks/auto_targets.py: auto against the best fixed defence, per attack and on the mean."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "auto_targets.py"


def _fixed() -> dict:
    return {"command": "fixed", "date": "2026-11-24", "attacks_in_means": ["a", "b"],
            "defenses": {"none": "", "jpeg10": "", "eclipse": ""},
            "table": {"none": {"none": 0.70, "jpeg10": 0.63, "eclipse": 0.67},
                      "a": {"none": 0.30, "jpeg10": 0.62, "eclipse": 0.67},
                      "b": {"none": 0.35, "jpeg10": 0.50, "eclipse": 0.48}}}


def _auto(a: float, b: float, clean: float) -> dict:
    return {"command": "auto run", "attacks_in_means": ["a", "b"], "clean_accuracy": 0.70,
            "table": {"none": {"none": 0.70, "auto": clean}, "a": {"none": 0.31, "auto": a}, "b": {"none": 0.35, "auto": b}},
            "auto_choices": {"a": {"chosen": "repair"}, "b": {"chosen": "jpeg10"}, "none": {"chosen": "none"}}}


def _run(tmp_path: Path, auto: dict) -> tuple[subprocess.CompletedProcess, dict]:
    (tmp_path / "auto.json").write_text(json.dumps(auto))
    (tmp_path / "fixed.json").write_text(json.dumps(_fixed()))
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "auto.json"), "--fixed", str(tmp_path / "fixed.json")],
                         capture_output=True, text=True, timeout=120)
    out = tmp_path / "auto-targets.json"
    return run, (json.loads(out.read_text()) if out.is_file() else {})


def test_gaps_means_and_targets_are_computed_against_the_best_fixed_defence(tmp_path):
    run, t = _run(tmp_path, _auto(0.665, 0.55, 0.695))
    assert run.returncode == 0, run.stderr
    assert t["per_attack"]["a"]["best_fixed"] == "eclipse" and t["per_attack"]["a"]["gap_points"] == pytest.approx(-0.5)
    assert t["per_attack"]["b"]["best_fixed"] == "jpeg10" and t["per_attack"]["b"]["gap_points"] == pytest.approx(5.0)
    assert t["auto_mean"] == pytest.approx(0.6075)
    assert t["fixed_means_over_the_same_attacks"]["eclipse"] == pytest.approx(0.575)
    assert t["targets"] == {"ratio_to_clean_ge_0.90_on_every_attack": False,  # b: 0.55 / 0.70 = 0.79
                            "within_1_point_of_best_fixed_on_every_attack": True,
                            "mean_ge_best_fixed_mean_plus_3_points": True,  # 60.75 >= 57.5 + 3
                            "clean_within_1_point_of_none": True}
    assert t["shared_cells"]["a|none"] == {"this_run": 0.31, "fixed_table": 0.30}
    assert "| a | repair | 66.5 | eclipse | 67.0 | -0.5 |" in run.stdout


def test_a_missed_target_is_reported_as_missed(tmp_path):
    run, t = _run(tmp_path, _auto(0.60, 0.50, 0.65))
    assert run.returncode == 0, run.stderr
    assert t["targets"]["within_1_point_of_best_fixed_on_every_attack"] is False  # a: 60 vs 67
    assert t["targets"]["clean_within_1_point_of_none"] is False  # 65 vs 70
    assert "within_1_point_of_best_fixed_on_every_attack: MISSED" in run.stdout


def test_a_missing_result_file_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.json"), "--fixed", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and run.stderr.strip().endswith("nope.json: no such result file")


def test_the_auto_best_column_is_judged_from_its_own_choices_and_not_counted_as_fixed(tmp_path):
    auto = _auto(0.60, 0.45, 0.70)
    for attack, value in (("none", 0.70), ("a", 0.66), ("b", 0.49)):
        auto["table"][attack]["auto-best"] = value
        auto["table"][attack]["candidate:jpeg30"] = 0.99  # a counterfactual column is never the best fixed one
    auto["auto_best_choices"] = {"a": {"chosen": "purify400"}, "b": {"chosen": "jpeg10"}, "none": {"chosen": "none"}}
    (tmp_path / "auto.json").write_text(json.dumps(auto))
    (tmp_path / "fixed.json").write_text(json.dumps(_fixed()))
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "auto.json"), "--fixed", str(tmp_path / "fixed.json"),
                          "--column", "auto-best"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    t = json.loads((tmp_path / "auto-targets-auto-best.json").read_text())
    assert t["column"] == "auto-best" and t["per_attack"]["a"]["chosen"] == "purify400"
    assert t["per_attack"]["a"]["best_fixed"] == "eclipse" and t["per_attack"]["a"]["gap_points"] == pytest.approx(-1.0)
    assert t["per_attack"]["b"]["gap_points"] == pytest.approx(-1.0)
    assert not (tmp_path / "auto-targets.json").exists()


def test_rows_of_two_invocations_are_judged_as_one_table(tmp_path):
    whole = _auto(0.665, 0.55, 0.695)
    first = {**whole, "protocol": "p", "victim_seed": 0, "command": "run a", "attacks_in_means": ["a"],
             "table": {k: whole["table"][k] for k in ("none", "a")},
             "auto_choices": {k: whole["auto_choices"][k] for k in ("none", "a")}}
    second = {**whole, "protocol": "p", "victim_seed": 0, "command": "run b", "attacks_in_means": ["b"],
              "table": {"none": {"none": 0.70}, "b": whole["table"]["b"]}, "auto_choices": {"b": {"chosen": "jpeg10"}}}
    paths = [tmp_path / "first.json", tmp_path / "second.json"]
    for path, run in zip(paths, (first, second)):
        path.write_text(json.dumps(run))
    (tmp_path / "fixed.json").write_text(json.dumps(_fixed()))
    command = [sys.executable, str(SCRIPT), *map(str, paths), "--fixed", str(tmp_path / "fixed.json"),
               "--out", str(tmp_path / "both")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    t = json.loads((tmp_path / "both.json").read_text())
    assert t["attacks"] == ["a", "b"] and t["all_attacks_of_the_fixed_table"] and t["auto_mean"] == pytest.approx(0.6075)
    assert t["per_attack"]["b"]["chosen"] == "jpeg10" and t["auto_on_clean"] == 0.695 and t["auto_run"] == "run a ; run b"
    second["victim_seed"] = 1
    paths[1].write_text(json.dumps(second))
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "different protocols / victim seeds" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


PROXY_RANKING = SCRIPT.with_name("proxy_ranking.py")


@pytest.mark.parametrize("order, rho, regret", [(1, 1.0, 0.0), (-1, -1.0, 37.0)])
def test_proxy_ranking_pairs_candidates_with_fixed_defences(tmp_path, order, rho, regret):
    victim = {"none": 0.30, "jpeg10": 0.62, "grayscale": 0.50, "eclipse": 0.67}
    proxy = {"none": 0.3, "jpeg10": 0.5, "grayscale": 0.4, "repair+purify400+comp-mid": 0.6, "comp-mild": 0.9}
    proxy = {k: (v if order > 0 or k == "comp-mild" else 1 - v) for k, v in proxy.items()}
    run = {"command": "auto run", "table": {"a": {"none": 0.30}}, "auto_choices": {"a": {"validation_accuracy": proxy}}}
    fixed = {"command": "fixed", "table": {"a": victim}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "fixed.json").write_text(json.dumps(fixed))
    out = subprocess.run([sys.executable, str(PROXY_RANKING), str(tmp_path / "run.json"), "--fixed", str(tmp_path / "fixed.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "run-proxy-ranking.json").read_text())["per_attack"]["a"]
    assert set(result["pairs"]) == {"none", "jpeg10", "grayscale", "repair+purify400+comp-mid"}  # comp-mild: no column
    assert result["spearman"] == pytest.approx(rho) and result["regret_points"] == pytest.approx(regret)


def test_one_result_file_with_auto_and_fixed_columns_keeps_auto_out_of_the_fixed_means(tmp_path):
    auto = _auto(0.665, 0.55, 0.695)
    auto["defenses"] = {"none": "", "jpeg10": "", "auto": "", "candidate:chroma4": ""}
    for attack, value in (("none", 0.63), ("a", 0.62), ("b", 0.50)):
        auto["table"][attack]["jpeg10"] = value
        auto["table"][attack]["candidate:chroma4"] = 0.99
    auto["date"] = "2026-12-08"
    (tmp_path / "both.json").write_text(json.dumps(auto))
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "both.json"), "--fixed", str(tmp_path / "both.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    t = json.loads((tmp_path / "both-targets.json").read_text())
    assert set(t["fixed_means_over_the_same_attacks"]) == {"none", "jpeg10"}
    assert t["fixed_means_over_the_same_attacks"]["jpeg10"] == pytest.approx(0.56)
    assert t["targets"]["mean_ge_best_fixed_mean_plus_3_points"]  # auto 0.6075 >= 0.56 + 0.03
