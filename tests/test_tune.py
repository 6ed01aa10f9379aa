"""`easyedit-kne tune`: two tiny trials on a tiny model and tiny KnowEdit files, resume, outputs, refusal."""

import json

import pytest
import yaml

from easyedit_kne.tuning import space as sp
from easyedit_kne.tuning.study import run_study

pytest.importorskip("optuna")


def _record(f, other):
    return {"subject": f["subject"], "prompt": f["prompt"], "target_new": f["target_new"],
            "ground_truth": f["target_true"], "rephrase_prompt": f["rephrase_prompt"],
            "locality": {"Relation_Specificity": [{"prompt": other["prompt"], "ground_truth": other["target_true"]}]},
            "portability": {"Subject_Aliasing": [{"prompt": f["rephrase_prompt"], "ground_truth": f["target_new"]}]}}


def _files(root, facts, n_zsre):
    recs = [_record(facts[i % len(facts)], facts[(i + 5) % len(facts)]) for i in range(n_zsre)]
    (root / "zsre").mkdir(parents=True, exist_ok=True)
    (root / "zsre" / "ZsRE-test-all.json").write_text(json.dumps(recs))
    return root


def _cfg(**kw):
    cfg = sp.default_config("KNE")
    cfg.update(model="fact-model", datasets={"zsre": 2}, localization_items=2,
               base={"device": "cpu", "max_length": 40, "ig_steps": 2},
               pruner={"n_startup_trials": 10, "n_warmup_steps": 10},
               space={"target": {"type": "categorical", "choices": ["mlp.down_proj:in"]},
                      "p": {"type": "float", "low": 2.0, "high": 10.0},
                      "lr": {"type": "float", "low": 0.01, "high": 0.05, "log": True},
                      "num_steps": {"type": "int", "low": 5, "high": 10, "step": 5},
                      "t_loss": {"type": "categorical", "choices": [0.1]},
                      "init": {"type": "categorical", "choices": ["zero", "kaiming"]},
                      "localization": {"type": "categorical", "choices": ["shared", "edited"]}})
    cfg.update(kw)
    return cfg


def test_two_trials_resume_and_outputs(fact_model, tmp_path):
    fm = fact_model
    root = _files(tmp_path / "ke", fm.facts, 404)
    out = tmp_path / "study"
    study = run_study(_cfg(), str(out), 2, model=fm.model, tok=fm.tok, knowedit_root=root)
    assert len(study.trials) == 2
    lines = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(r["state"] == "COMPLETE" for r in lines)
    assert lines[0]["dev_items"] == {"zsre": ["zsre/ZsRE-test-all.json#200", "zsre/ZsRE-test-all.json#201"]}
    assert all(set(r["table"]["zsre"]) >= {"Edit_Succ", "Locality", "Portability"} for r in lines)
    # resuming continues the same study from the journal
    study = run_study(_cfg(), str(out), 3, model=fm.model, tok=fm.tok, knowedit_root=root)
    assert len(study.trials) == 3 and len((out / "trials.jsonl").read_text().splitlines()) == 3
    best = (out / "best.yaml").read_text()
    assert best.startswith("# Tuned by `easyedit-kne tune`") and "Dev items: zsre: zsre/ZsRE-test-all.json#200" in best
    from easyedit_kne.bench.portable import ABSOLUTE

    assert not ABSOLUTE.search(best) and f"folder {out.name})" in best  # committed beside the study: no machine path
    hp = yaml.safe_load(best)
    assert hp["alg_name"] == "KNE" and hp["target_modules"] == ["mlp.down_proj"]
    assert (out / "study.journal").is_file() and (out / "config.yaml").is_file()


def test_refuses_test_items(fact_model, tmp_path):
    fm = fact_model
    root = _files(tmp_path / "ke", fm.facts, 250)  # a 200-item tail would reach into the test items [0, 100)
    with pytest.raises(ValueError, match="test split"):
        run_study(_cfg(localization_items=200), str(tmp_path / "s"), 1, model=fm.model, tok=fm.tok,
                  knowedit_root=root)
    assert not (tmp_path / "s").exists()


def test_score_enforces_edit_succ_constraint():
    obj = {"constraint": {"metric": "Edit_Succ", "min": 99}, "maximize": ["Locality", "Portability"]}
    assert sp.score({"z": {"Edit_Succ": 100, "Locality": 80, "Portability": 40}}, obj) == 60
    low = sp.score({"z": {"Edit_Succ": 98, "Locality": 100, "Portability": 100}}, obj)
    assert low == 98 - 200 and low < sp.score({"z": {"Edit_Succ": 99, "Locality": 0, "Portability": 0}}, obj)
    assert sp.parse_layers("3-5") == [3, 4, 5] and sp.parse_layers("all") == []


def test_resume_fails_a_trial_left_running_by_a_killed_process(fact_model, tmp_path):
    import optuna

    from easyedit_kne.tuning.study import _storage

    fm = fact_model
    root = _files(tmp_path / "ke", fm.facts, 404)
    out = tmp_path / "study"
    out.mkdir()
    # a process that asked for a trial and was killed before telling its result
    killed = optuna.create_study(study_name="tune", storage=_storage(str(out)), direction="maximize")
    killed.ask()
    assert killed.trials[0].state.name == "RUNNING"
    study = run_study(_cfg(), str(out), 2, model=fm.model, tok=fm.tok, knowedit_root=root)
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL" and states[1:] == ["COMPLETE"]  # one new trial makes 2 finished; none left hanging


def test_seeds_run_first_and_bad_seeds_are_refused(fact_model, tmp_path):
    fm, root = fact_model, _files(tmp_path / "knowedit", fact_model.facts, 404)
    seed = {"target": "mlp.down_proj:in", "p": 7.5, "lr": 0.02, "num_steps": 5, "t_loss": 0.1, "init": "kaiming",
            "localization": "shared"}
    study = run_study(_cfg(seeds=[seed]), str(tmp_path / "s"), 1, model=fm.model, tok=fm.tok, knowedit_root=root)
    assert study.trials[0].params == seed
    with pytest.raises(ValueError, match="p=20.0 is outside"):
        run_study(_cfg(seeds=[dict(seed, p=20.0)]), str(tmp_path / "s2"), 1, model=fm.model, tok=fm.tok,
                  knowedit_root=root)
    with pytest.raises(ValueError, match="missing \\['init'\\]"):
        run_study(_cfg(seeds=[{k: v for k, v in seed.items() if k != "init"}]), str(tmp_path / "s3"), 1,
                  model=fm.model, tok=fm.tok, knowedit_root=root)


def test_progress_bars_show_localization_and_items(fact_model, tmp_path, capsys):
    """With progress on, a trial shows its items (and the shared localization) as tqdm bars on stderr; off by
    default for library callers."""
    fm = fact_model
    root = _files(tmp_path / "ke", fm.facts, 404)
    seed = {"target": "mlp.down_proj:in", "p": 5.0, "lr": 0.02, "num_steps": 5, "t_loss": 0.1, "init": "zero",
            "localization": "shared"}
    run_study(_cfg(seeds=[seed]), str(tmp_path / "on"), 1, model=fm.model, tok=fm.tok, knowedit_root=root,
              progress=True)
    err = capsys.readouterr().err
    assert "KNE trial" in err and "2/2" in err and "zsre/ZsRE-test-all.json#201" in err
    assert "KNE attribution" in err  # the shared localization
    run_study(_cfg(seeds=[seed]), str(tmp_path / "off"), 1, model=fm.model, tok=fm.tok, knowedit_root=root)
    assert "KNE trial" not in capsys.readouterr().err
