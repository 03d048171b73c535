"""prefix_rft.data: OpenR1 / generic training data, eval sets, the data contract, the CLI."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefix_rft.data import ContractError, read_parquet_rows, validate_parquet, validate_rows
from prefix_rft.data.__main__ import main as data_main
from prefix_rft.data.contract import INSTRUCTION
from prefix_rft.data.eval_sets import BENCHMARKS, prepare_eval
from prefix_rft.data.sources import SourceError, load_rows
from prefix_rft.data.train import percentiles, prepare_generic, prepare_openr1, with_instruction
from prefix_rft.reward import compute_score

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
OPENR1_JSONL = os.path.join(FIXTURES, "openr1_sample.jsonl")
GENERIC_JSONL = os.path.join(FIXTURES, "generic_sample.jsonl")
EVAL_DIR = os.path.join(FIXTURES, "eval")

# The public schema of Elliott/Openr1-Math-46k-8192 (as the hub's parquet stores it).
OPENR1_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("target", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string())])),
    ]
)


@pytest.fixture
def openr1_parquet(tmp_path):
    rows = [json.loads(line) for line in open(OPENR1_JSONL)]
    path = tmp_path / "openr1.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=OPENR1_SCHEMA), path)
    return str(path)


@pytest.fixture
def offline_hub(monkeypatch):
    """Make hub loads fail at once (this machine has no hub; without this datasets retries for ~20 s)."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_tok_dir(tmp_path_factory):
    from benchmarks.fixtures.tiny import build_tiny_tokenizer

    d = str(tmp_path_factory.mktemp("tok"))
    build_tiny_tokenizer(d)
    return d


def test_with_instruction_added_once():
    assert with_instruction("What is 1+1?") == "What is 1+1?\n" + INSTRUCTION
    already = "What is 1+1? Please reason step by step, and put your final answer within \\boxed{}."
    assert with_instruction(already) == already


def test_openr1_conversion(openr1_parquet, tmp_path):
    report = prepare_openr1(openr1_parquet, output_dir=str(tmp_path / "out"))
    assert report.rows_in == 8 and report.rows_written == 5
    assert report.dropped == {"missing_answer": 1, "bad_field": 2}
    assert sorted(i for i, _ in report.bad_rows) == [3, 4, 5]
    assert any("ground_truth" in reason for i, reason in report.bad_rows if i == 3)
    rows = read_parquet_rows(str(tmp_path / "out" / "train.parquet"))
    first = rows[0]
    # LUFFY's system turn is dropped; the user turn = problem + instruction; the demo = target[0].content
    assert first["prompt"] == [{"role": "user", "content": "What is $2+3$?\n" + INSTRUCTION}]
    assert first["demonstrations"] == ["<think>\n2+3=5\n</think>\n\nThe sum is $\\boxed{5}$."]
    assert first["reward_model"] == {"ground_truth": "5", "style": "rule"}
    assert first["data_source"] == "openr1" and first["ability"] == "math"
    assert [r["extra_info"]["index"] for r in rows] == list(range(5))
    assert [r["extra_info"]["source_index"] for r in rows] == [0, 1, 2, 6, 7]
    assert all(r["extra_info"]["split"] == "train" for r in rows)
    # the row that already carried the instruction does not get it twice
    assert rows[3]["prompt"][0]["content"].count("put your final answer within") == 1
    # every demonstration scores 1 against its ground truth with our reward
    for r in rows:
        assert (
            compute_score(r["data_source"], r["demonstrations"][0], r["reward_model"]["ground_truth"])[
                "score"
            ]
            == 1.0
        )
    assert validate_parquet(str(tmp_path / "out" / "train.parquet"), require_demos=True) == 5
    report_json = json.load(open(tmp_path / "out" / "prepare_report.json"))
    assert report_json["rows_written"] == 5 and report_json["dropped"]["bad_field"] == 2


def test_openr1_loads_in_verl_rlhf_dataset(openr1_parquet, tmp_path, tiny_tok_dir):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    prepare_openr1(openr1_parquet, output_dir=str(tmp_path / "out"))
    tok = AutoTokenizer.from_pretrained(tiny_tok_dir)
    cfg = OmegaConf.create({"max_prompt_length": 4096, "cache_dir": str(tmp_path / "cache")})
    ds = RLHFDataset(str(tmp_path / "out" / "train.parquet"), tok, cfg)
    assert len(ds) == 5
    item = ds[1]
    assert item["raw_prompt"][0]["role"] == "user"
    assert list(item["demonstrations"]) == [
        "<think>\nCommon denominator 4: 2/4+1/4=3/4.\n</think>\n\n$\\boxed{\\frac{3}{4}}$"
    ]
    assert item["reward_model"]["ground_truth"] == "\\frac{3}{4}"


def test_max_demo_tokens_val_split_and_report(openr1_parquet, tmp_path, tiny_tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tok_dir)
    rows = [json.loads(line) for line in open(OPENR1_JSONL)]
    lengths = {
        i: len(tok(r["target"][0]["content"], add_special_tokens=False)["input_ids"])
        for i, r in enumerate(rows)
        if i in (0, 1, 2, 6, 7)
    }
    limit = sorted(lengths.values())[-1] - 1  # only the longest demo (row 2) exceeds it
    assert max(lengths, key=lengths.get) == 2
    report = prepare_openr1(
        openr1_parquet,
        output_dir=str(tmp_path / "o"),
        max_demo_tokens=limit,
        tokenizer=tiny_tok_dir,
        val_size=1,
        seed=3,
    )
    assert report.dropped["demo_too_long"] == 1 and report.demos_dropped_too_long == 1
    kept = sorted(v for k, v in lengths.items() if k != 2)
    assert report.demo_token_percentiles["max"] == kept[-1]
    assert report.demo_token_percentiles["min"] == kept[0]
    assert report.rows_written == 3 and report.val_rows == 1
    val = read_parquet_rows(str(tmp_path / "o" / "val.parquet"))
    assert "demonstrations" not in val[0] and val[0]["extra_info"]["split"] == "val"
    train = read_parquet_rows(str(tmp_path / "o" / "train.parquet"))
    problems = {r["prompt"][0]["content"] for r in train}
    assert val[0]["prompt"][0]["content"] not in problems
    assert "demo length (tokens)" in report.render()


def test_max_demo_tokens_needs_tokenizer(openr1_parquet, tmp_path):
    with pytest.raises(ValueError, match="--tokenizer"):
        prepare_openr1(openr1_parquet, output_dir=str(tmp_path / "o"), max_demo_tokens=10)


def test_subsample_is_seeded(openr1_parquet, tmp_path):
    def run(seed, name):
        prepare_openr1(openr1_parquet, output_dir=str(tmp_path / name), subsample=0.4, seed=seed)
        return [
            r["extra_info"]["source_index"] for r in read_parquet_rows(str(tmp_path / name / "train.parquet"))
        ]

    a, b = run(0, "a"), run(0, "b")
    assert a == b and len(a) == 2  # round(0.4 * 5)
    assert a == sorted(a)  # source order kept
    picks = {tuple(run(s, f"s{s}")) for s in range(6)}
    assert len(picks) > 1  # the seed matters


def test_generic_groups_rows_and_reports(tmp_path):
    report = prepare_generic(GENERIC_JSONL, output_dir=str(tmp_path / "g"))
    assert report.rows_in == 6 and report.rows_written == 3
    assert report.dropped["missing_answer"] == 1 and report.dropped["answer_conflict"] == 1
    assert {i for i, _ in report.bad_rows} == {3, 4}
    rows = read_parquet_rows(str(tmp_path / "g" / "train.parquet"))
    by_q = {r["prompt"][0]["content"].split("\n")[0]: r for r in rows}
    assert by_q["What is 1+1?"]["demonstrations"] == ["1+1=2, so \\boxed{2}.", "Two ones make \\boxed{2}."]
    assert by_q["What is 2*3?"]["demonstrations"] == ["2*3=6 \\boxed{6}", "Six: \\boxed{6}"]
    assert by_q["What is 10/2?"]["reward_model"]["ground_truth"] == "5"  # int answer -> "5"
    assert rows[0]["data_source"] == "generic_sample"


def test_generic_answer_from_solution_and_keys(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"q": "What is 9-4?", "sol": "9-4 = \\boxed{5}"},
                {"q": "What is 3+3?", "sol": "no box here"},
            ]
        )
    )
    report = prepare_generic(
        str(src),
        output_dir=str(tmp_path / "o"),
        problem_key="q",
        solution_key="sol",
        answer_key="ans",
        answer_from_solution=True,
    )
    assert report.rows_written == 1 and report.bad_rows[0][0] == 1
    assert read_parquet_rows(str(tmp_path / "o" / "train.parquet"))[0]["reward_model"]["ground_truth"] == "5"
    with pytest.raises(ValueError, match="not found"):
        prepare_generic(str(src), output_dir=str(tmp_path / "x"), problem_key="problem")


def test_generic_without_demos(tmp_path):
    report = prepare_generic(GENERIC_JSONL, output_dir=str(tmp_path / "n"), solution_key=None)
    rows = read_parquet_rows(str(tmp_path / "n" / "train.parquet"))
    assert report.rows_written == 3 and all("demonstrations" not in r for r in rows)


def test_hub_load_failure_names_the_fix(offline_hub):
    with pytest.raises(SourceError, match="download it elsewhere"):
        load_rows("no-such-org/no-such-dataset-xyz")


def _good_row(**over):
    row = {
        "data_source": "x",
        "prompt": [{"role": "user", "content": "q"}],
        "ability": "math",
        "reward_model": {"ground_truth": "1", "style": "rule"},
        "extra_info": {"index": 0, "split": "train"},
        "demonstrations": ["d"],
    }
    row.update(over)
    return row


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"reward_model": {"ground_truth": "", "style": "rule"}}, "reward_model.ground_truth"),
        ({"prompt": []}, "prompt: must be a non-empty list"),
        ({"prompt": [{"role": "assistant", "content": "x"}]}, "last message must be the user turn"),
        ({"demonstrations": [1, 2]}, "demonstrations: must be a string, a list of strings or a list of"),
        ({"demonstrations": [""]}, "at least one non-empty"),
        ({"extra_info": {"split": "train"}}, "extra_info.index"),
        ({"data_source": ""}, "data_source"),
    ],
)
def test_contract_errors_name_row_and_key(bad, message):
    with pytest.raises(ContractError) as e:
        validate_rows([_good_row(), _good_row(**bad)], require_demos=True, where="train")
    assert "train row 1:" in str(e.value) and message in str(e.value)
    assert "row 0" not in str(e.value)


def test_contract_demo_requirements():
    assert validate_rows([_good_row(demonstrations="a single string demo")], require_demos=True) == 1
    no_demo = _good_row()
    del no_demo["demonstrations"]
    with pytest.raises(ContractError, match="demonstrations: missing"):
        validate_rows([no_demo], require_demos=True)
    assert validate_rows([no_demo], require_demos=False) == 1
    with pytest.raises(ContractError, match="validation rows must carry no demonstrations"):
        validate_rows([_good_row()], require_demos=False)


def test_validate_parquet_on_tiny_rows(tmp_path):
    from benchmarks.fixtures.tiny import synthetic_math_rows, write_parquet

    path = write_parquet(synthetic_math_rows(4), str(tmp_path / "t.parquet"))
    assert validate_parquet(path, require_demos=True) == 4


# ---------------------------------------------------------------------------- eval sets


def test_eval_sets_from_public_schemas(tmp_path):
    manifest = prepare_eval(str(tmp_path / "e"), local_dir=EVAL_DIR)
    assert set(manifest) == set(BENCHMARKS)
    assert {k: v["n_samples"] for k, v in manifest.items()} == {
        "aime24": 32,
        "aime25": 32,
        "amc23": 32,
        "math500": 1,
        "minerva": 1,
        "olympiadbench": 1,
        "arc_c": 1,
        "gpqa_diamond": 1,
        "mmlu_pro": 1,
    }
    assert json.load(open(tmp_path / "e" / "manifest.json"))["amc23"]["metric"] == "avg@32"

    def rows(name):
        r = read_parquet_rows(str(tmp_path / "e" / f"{name}.parquet"))
        validate_rows(r, require_demos=False)
        assert all(x["data_source"] == name and "demonstrations" not in x for x in r)
        return r

    gts = {name: [r["reward_model"]["ground_truth"] for r in rows(name)] for name in BENCHMARKS}
    assert gts["aime24"] == ["204", "25"]  # unboxed from the solution column
    assert gts["aime25"] == ["70", "588"]
    assert gts["amc23"] == ["27", "36"]  # 27.0 -> "27"
    assert gts["math500"] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{5}{6}"]
    assert gts["minerva"] == ["0.49", "100"]
    assert gts["olympiadbench"] == ["\\frac{1}{2}", "3, 5"]
    assert gts["arc_c"] == ["C", "B"]  # numeric labels -> letters by position
    assert gts["mmlu_pro"] == ["D", "B"]
    aime = rows("aime24")[0]
    assert aime["prompt"][0]["content"].endswith(INSTRUCTION)
    assert aime["extra_info"]["n_samples"] == 32
    arc = rows("arc_c")[0]
    assert "C. Planetary days will become shorter." in arc["prompt"][0]["content"]
    assert arc["extra_info"]["answer_type"] == "multiple_choice"
    # GPQA: the correct option is shuffled to a fixed letter, and the prompt shows it under that letter
    gpqa = rows("gpqa_diamond")
    for r, correct in zip(gpqa, ["10^-4 eV", "product 1"], strict=True):
        letter = r["reward_model"]["ground_truth"]
        assert f"{letter}. {correct}" in r["prompt"][0]["content"]
    again = prepare_eval(str(tmp_path / "e2"), local_dir=EVAL_DIR, benchmarks=["gpqa_diamond"])
    assert again["gpqa_diamond"]["rows"] == 2
    assert [
        r["reward_model"]["ground_truth"]
        for r in read_parquet_rows(str(tmp_path / "e2" / "gpqa_diamond.parquet"))
    ] == [r["reward_model"]["ground_truth"] for r in gpqa]
    # the reward scores a boxed letter on these rows
    assert (
        compute_score(
            "gpqa_diamond",
            f"\\boxed{{{gpqa[0]['reward_model']['ground_truth']}}}",
            gpqa[0]["reward_model"]["ground_truth"],
            gpqa[0]["extra_info"],
        )["score"]
        == 1.0
    )


def test_eval_sets_skip_bad_rows_and_report_failures(tmp_path, offline_hub):
    local = tmp_path / "local"
    local.mkdir()
    (local / "aime25.jsonl").write_text(
        json.dumps({"problem": "p", "answer": "", "id": "0"})
        + "\n"
        + json.dumps({"problem": "q", "answer": "3", "id": "1"})
        + "\n"
    )
    with pytest.raises(SourceError, match="no local copy of math500"):  # --local-dir: no hub fallback
        prepare_eval(str(tmp_path / "e"), local_dir=str(local), benchmarks=["aime25", "math500"])
    # the benchmark that could be prepared was still written
    r = read_parquet_rows(str(tmp_path / "e" / "aime25.parquet"))
    assert [x["reward_model"]["ground_truth"] for x in r] == ["3"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        prepare_eval(str(tmp_path / "e"), benchmarks=["nope"])


def test_ood_gold_letter_points_at_the_sources_correct_option(tmp_path, capsys):
    """Every OOD row: the prompt lists the source's options as ``A. ...`` lines in order (ARC-c, MMLU-Pro)
    or shuffled (GPQA), and the ground-truth letter's line is the source's correct answer."""
    from prefix_rft.data.sources import read_local

    prepare_eval(str(tmp_path / "e"), local_dir=EVAL_DIR, benchmarks=["arc_c", "gpqa_diamond", "mmlu_pro"])

    def lines(row):
        return [x for x in row["prompt"][0]["content"].split("\n") if len(x) > 2 and x[1:3] == ". "]

    for name in ("arc_c", "gpqa_diamond", "mmlu_pro"):
        src = read_local(os.path.join(EVAL_DIR, f"{name}.jsonl"))
        rows = read_parquet_rows(str(tmp_path / "e" / f"{name}.parquet"))
        for s, r in zip(src, rows, strict=True):
            gold = r["reward_model"]["ground_truth"]
            opts = lines(r)
            if name == "arc_c":
                texts, correct = (
                    s["choices"]["text"],
                    s["choices"]["text"][s["choices"]["label"].index(s["answerKey"])],
                )
            elif name == "mmlu_pro":
                texts, correct = s["options"], s["options"][s["answer_index"]]
            else:
                texts = [s["Correct Answer"]] + [s[f"Incorrect Answer {k}"] for k in (1, 2, 3)]
                correct = s["Correct Answer"]
            assert [o[:1] for o in opts] == list("ABCDEFGHIJ"[: len(texts)])
            assert sorted(o[3:] for o in opts) == sorted(texts)
            if name != "gpqa_diamond":
                assert [o[3:] for o in opts] == texts  # source order kept
            assert f"{gold}. {correct}" in opts
            assert compute_score(name, f"\\boxed{{{gold}}}", gold, r["extra_info"])["score"] == 1.0

    # MMLU-Pro's ten options reach J; an answer that disagrees with answer_index is skipped, not guessed
    local = tmp_path / "local"
    local.mkdir()
    ten = {
        "question": "Pick the last.",
        "options": [str(i) for i in range(10)],
        "answer": "J",
        "answer_index": 9,
    }
    clash = {**ten, "answer": "I"}
    (local / "mmlu_pro.jsonl").write_text(json.dumps(ten) + "\n" + json.dumps(clash) + "\n")
    manifest = prepare_eval(str(tmp_path / "e3"), local_dir=str(local), benchmarks=["mmlu_pro"])
    assert manifest["mmlu_pro"]["rows"] == 1 and manifest["mmlu_pro"]["skipped"] == 1
    assert "skipped source row 1: answer 'I' disagrees with answer_index 9 (0 = A)" in capsys.readouterr().out
    row = read_parquet_rows(str(tmp_path / "e3" / "mmlu_pro.parquet"))[0]
    assert row["reward_model"]["ground_truth"] == "J" and "\nJ. 9\n" in row["prompt"][0]["content"]


def test_cli_end_to_end(tmp_path, capsys, openr1_parquet):
    assert (
        data_main(
            ["prepare", "openr1", openr1_parquet, "--output-dir", str(tmp_path / "o"), "--val-size", "1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "rows in: 8" in out and "rows written: 4 train + 1 val" in out and "skipped source row 3" in out
    assert (
        data_main(["prepare", "generic", "--local-path", GENERIC_JSONL, "--output-dir", str(tmp_path / "g")])
        == 0
    )
    assert (
        data_main(
            ["prepare", "eval", "--output-dir", str(tmp_path / "e"), "--local-dir", EVAL_DIR, "--no-ood"]
        )
        == 0
    )
    assert sorted(os.listdir(tmp_path / "e")) == sorted(
        [f"{n}.parquet" for n in ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")]
        + ["manifest.json"]
    )
    assert (
        data_main(["prepare", "openr1", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "x")])
        == 1
    )
    assert "error:" in capsys.readouterr().err


def test_percentiles():
    assert percentiles([]) == {}
    p = percentiles(list(range(1, 101)))
    assert p == {"min": 1.0, "p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}


def test_all_eval_sets_load_together_in_verl(tmp_path, tiny_tok_dir, openr1_parquet):
    """data.val_files can list every benchmark file (and a prepared val.parquet): their schemas concatenate
    in verl's RLHFDataset."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    manifest = prepare_eval(str(tmp_path / "e"), local_dir=EVAL_DIR)
    files = [str(tmp_path / "e" / m["file"]) for m in manifest.values()]
    prepare_openr1(openr1_parquet, output_dir=str(tmp_path / "o"), val_size=2)
    files.append(str(tmp_path / "o" / "val.parquet"))
    cfg = OmegaConf.create({"max_prompt_length": 4096, "cache_dir": str(tmp_path / "cache")})
    ds = RLHFDataset(files, AutoTokenizer.from_pretrained(tiny_tok_dir), cfg)
    assert len(ds) == 2 * len(BENCHMARKS) + 2
    assert {ds[i]["data_source"] for i in range(len(ds))} == set(BENCHMARKS) | {"openr1"}


# ---------------------------------------------------------------------------- error messages (UX audit)


@pytest.mark.parametrize("source", ["./nope.jsonl", "/no/such/dir/data.parquet", "~/nope", "rel/x.json"])
def test_missing_local_file_is_not_treated_as_a_hub_id(source):
    with pytest.raises(SourceError, match=f"file not found: {source}") as e:
        load_rows(source)
    assert "huggingface" not in str(e.value)


def test_cli_missing_local_path(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    assert (
        data_main(["prepare", "generic", "--local-path", missing, "--output-dir", str(tmp_path / "o")]) == 1
    )
    assert f"--local-path: file not found: {missing}" in capsys.readouterr().err


def test_eval_local_dir_missing_dir_or_file_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="--local-dir .*nodir: directory not found"):
        prepare_eval(str(tmp_path / "e"), local_dir=str(tmp_path / "nodir"), benchmarks=["aime25"])
    (tmp_path / "local").mkdir()
    with pytest.raises(SourceError, match="aime25.parquet, aime25.jsonl, aime25.json or aime25/"):
        prepare_eval(str(tmp_path / "e"), local_dir=str(tmp_path / "local"), benchmarks=["aime25"])
    assert not os.path.exists(tmp_path / "e" / "manifest.json")  # every benchmark failed: no manifest


def test_eval_local_file_with_wrong_columns(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "aime25.jsonl").write_text(json.dumps({"question": "p", "solution": "3"}) + "\n")
    with pytest.raises(SourceError) as e:
        prepare_eval(str(tmp_path / "e"), local_dir=str(local), benchmarks=["aime25"])
    msg = str(e.value)
    assert "column(s) ['problem', 'answer'] not found; columns are ['question', 'solution']" in msg
    assert "aime25 expects ['problem', 'answer']" in msg and "aime25.jsonl" in msg
    assert not os.path.exists(tmp_path / "e" / "manifest.json")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--val-size", "-1"], "--val-size must be >= 0"),
        (["--val-size", "100"], "pass a --val-size below"),
        (["--subsample", "0"], "--subsample must be a fraction in (0, 1]"),
        (["--subsample", "1.5"], "--subsample must be a fraction in (0, 1]"),
        (["--tokenizer", "/nonexist/tok"], "--tokenizer /nonexist/tok could not be loaded"),
    ],
)
def test_cli_bad_options_name_the_flag(tmp_path, capsys, openr1_parquet, flags, message):
    assert data_main(["prepare", "openr1", openr1_parquet, "--output-dir", str(tmp_path / "o"), *flags]) == 1
    assert message in capsys.readouterr().err


def test_cli_empty_demo_key_rejected(tmp_path, capsys, openr1_parquet):
    with pytest.raises(SystemExit) as e:
        data_main(
            ["prepare", "openr1", openr1_parquet, "--output-dir", str(tmp_path / "o"), "--demo-key", ""]
        )
    assert e.value.code == 2 and "--demo-key must be a non-empty column name" in capsys.readouterr().err


def test_generic_missing_answer_names_column_and_fix(tmp_path):
    src = tmp_path / "g.jsonl"
    src.write_text(
        json.dumps({"problem": "a", "solution": "s", "answer": ""})
        + "\n"
        + json.dumps({"problem": "b", "solution": "s \\boxed{2}", "answer": "2"})
        + "\n"
    )
    report = prepare_generic(str(src), output_dir=str(tmp_path / "o"))
    assert report.bad_rows == [(0, "answer column 'answer' is empty; fill it or pass --answer-from-solution")]
    assert report.dropped["missing_answer"] == 1


def test_openr1_on_wrong_schema_points_to_generic(tmp_path):
    with pytest.raises(ValueError, match="not in the OpenR1 schema.*prepare generic"):
        prepare_openr1(GENERIC_JSONL, output_dir=str(tmp_path / "o"))


def test_generic_key_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        data_main(["prepare", "generic", "--help"])
    out = capsys.readouterr().out
    assert "Default: problem" in out and "Default: answer" in out


@pytest.mark.parametrize(
    ("solution", "reported"),
    [
        (True, "solution column 'solution' must be a string, got bool True"),
        ([1, 2], "solution column 'solution' must be a string, got int 1"),
        ({"text": "2"}, "solution column 'solution' must be a string, got dict"),
        (None, "solution column 'solution' is missing"),
    ],
)
def test_cli_ill_typed_solution_is_not_reported_missing(tmp_path, capsys, solution, reported):
    src = tmp_path / "src.jsonl"
    src.write_text(json.dumps({"problem": "1+1?", "solution": solution, "answer": "2"}) + "\n")
    assert data_main(["prepare", "generic", str(src), "--output-dir", str(tmp_path / "o")]) == 1
    assert f"skipped source row 0: {reported}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.jsonl",
            b'{"problem": "a"}\n\xff\xfe{"a": 1}\n',
            "bad.jsonl:2: not UTF-8 text (byte 0xff at column 1)",
        ),
        ("bad.json", b'[{"problem": "a"},\n {"problem": 1,', "bad.json:2:16: invalid JSON"),
        ("bad.parquet", b"garbage", "bad.parquet: not a readable parquet file"),
    ],
)
def test_cli_decode_errors_name_file_and_line(tmp_path, capsys, name, content, message):
    src = tmp_path / name
    src.write_bytes(content)
    assert data_main(["prepare", "generic", str(src), "--output-dir", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err


def _openr1_row(problem: str, answer, demo="<think>\nok\n</think>\n\\boxed{1}") -> dict:
    return {
        "data_source": "openr1",
        "prompt": [{"role": "user", "content": problem}],
        "target": [{"role": "assistant", "content": demo}],
        "ability": "math",
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": 0, "split": "default"},
    }


def test_non_finite_and_inexact_float_answers_are_skipped_naming_the_row(tmp_path):
    """Before: written as `nan`, `inf`, `1000000000000000019884624838656`; `\\boxed{nan}` then scored correct."""
    src = tmp_path / "src.jsonl"
    answers = ["7", float("nan"), float("inf"), 1e30, "NaN", 12.0]
    src.write_text("\n".join(json.dumps(_openr1_row(f"What is {i}?", a)) for i, a in enumerate(answers)))
    report = prepare_openr1(str(src), output_dir=str(tmp_path / "o"))
    assert report.rows_written == 2  # "7" and 12.0 -> "12"
    bad = dict(report.bad_rows)
    assert set(bad) == {1, 2, 3, 4}
    assert "nan" in bad[1] and "inf" in bad[2] and "too large to be exact" in bad[3] and "'NaN'" in bad[4]
    assert report.dropped["missing_answer"] == 4
    answers_written = [r["reward_model"]["ground_truth"] for r in read_parquet_rows(report.outputs["train"])]
    assert answers_written == ["7", "12"]
    # the generic converter applies the same rule
    gen = tmp_path / "gen.jsonl"
    gen.write_text(
        "\n".join(
            json.dumps({"problem": f"Q{i}", "solution": "s", "answer": a}) for i, a in enumerate(answers)
        )
    )
    report = prepare_generic(str(gen), output_dir=str(tmp_path / "g"))
    assert report.rows_written == 2 and {i for i, _ in report.bad_rows} == {1, 2, 3, 4}


def test_openr1_numeric_demo_and_duplicate_problems_are_skipped_and_counted(tmp_path):
    """Before: an int demo content became the demo "2"; duplicate problems were written 3 times, uncounted."""
    src = tmp_path / "src.jsonl"
    rows = [
        _openr1_row("What is 1+1?", "2"),
        _openr1_row("What is 2+2?", "4", demo=2),
        _openr1_row("What is 1+1?", "2"),
        _openr1_row("What is 1+1?", "2"),
        _openr1_row("What is 3+3?", "6"),
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    report = prepare_openr1(str(src), output_dir=str(tmp_path / "o"))
    assert report.rows_written == 2
    assert report.dropped["bad_field"] == 1 and report.dropped["duplicate_problem"] == 2
    bad = dict(report.bad_rows)
    assert "target[0].content must be a string, got int 2" in bad[1]
    assert bad[2] == bad[3] == "same problem as source row 0 (kept once)"
    assert "duplicate_problem=2" in report.render()


def test_generic_empty_solution_list_is_skipped_naming_its_source_row(tmp_path):
    """Before: the empty list aborted the whole run, naming "train row 0" for source row 2."""
    src = tmp_path / "src.jsonl"
    rows = [
        {"problem": "What is 1+1?", "solution": ["\\boxed{2}"], "answer": "2"},
        {"problem": "What is 2+2?", "solution": ["\\boxed{4}"], "answer": "4"},
        {"problem": "What is 3+3?", "solution": [], "answer": "6"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    report = prepare_generic(str(src), output_dir=str(tmp_path / "o"))
    assert report.rows_written == 2 and report.dropped["bad_field"] == 1
    assert report.bad_rows == [(2, "solution column 'solution' is an empty list (no demonstration)")]


def test_huge_demo_is_tokenized_only_as_far_as_the_limit_can_keep():
    """Before: one 50 MB demo with --max-demo-tokens 8192 was tokenized whole (85 s, 10 GB peak)."""
    from prefix_rft.data.train import PrepareReport, filter_demo_lengths

    longest = []

    def count(texts):  # ~1 token per 4 characters, records the longest text it was given
        longest.append(max((len(t) for t in texts), default=0))
        return [len(t) // 4 for t in texts]

    huge = "word " * 10_000_000  # 50 MB
    rows = [
        {"demonstrations": [huge], "id": 0},
        {"demonstrations": ["short demo", "x" * 30_000], "id": 1},
    ]
    report = PrepareReport()
    kept = filter_demo_lengths(rows, count, 8192, report)
    assert max(longest) <= 16 * 8192  # never more than the window
    assert [r["id"] for r in kept] == [1] and kept[0]["demonstrations"] == ["short demo", "x" * 30_000]
    assert report.dropped["demo_too_long"] == 1 and report.demos_dropped_too_long == 1
    assert report.demo_token_percentiles["max"] == 7500  # the kept demos' exact counts


def test_cli_prepares_a_50mb_demo_in_under_1gb(tmp_path, tiny_tok_dir):
    """The CLI end to end on one 50 MB demo with --max-demo-tokens 8192 (before: 85 s, 10 GB peak)."""
    import subprocess
    import sys

    src = tmp_path / "src.jsonl"
    rows = [
        _openr1_row("What is 1+1?", "2", demo="The answer is 2 " * 3_200_000),  # 51 MB
        _openr1_row("What is 2+2?", "4", demo="2+2 = \\boxed{4}"),
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    cli = [sys.executable, "-m", "prefix_rft.data", "prepare", "openr1", str(src), "--output-dir"]
    cli += [str(tmp_path / "o"), "--max-demo-tokens", "8192", "--tokenizer", tiny_tok_dir]
    # a fresh parent, so ru_maxrss of its children is this command's peak alone
    probe = (
        "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cli], capture_output=True, text=True, timeout=600)
    rc, peak_kb = map(int, out.stdout.split())
    assert rc == 0, out.stderr[-2000:]
    assert peak_kb < 1024 * 1024, f"peak {peak_kb / 1024:.0f} MB"
    report = json.loads((tmp_path / "o" / "prepare_report.json").read_text())
    assert report["dropped"] == {"demo_too_long": 1} and report["rows_written"] == 1
