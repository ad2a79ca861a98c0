"""MMHal-Bench: the rating parser and figures by hand, the question loader on a fixture in the public
format, and the task against a fake OpenAI-compatible judge served on localhost (no other network)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from adapt.cli import main
from adapt.eval import mmhal
from adapt.eval.formats import DataError
from adapt.eval.runner import run_task
from adapt.eval.tasks import get_task

from runner_helpers import NoBackbone, ScriptedMethod, Stop

DATA = Path(__file__).parent / "data" / "mmhal"

# the fake judge's verdict for each scripted answer
VERDICTS = {"right": "Accurate and detailed.\nRating: 5", "plain": "Correct but says little. Rating: 3",
            "wrong": "The answer invents an object.\nRating: 1", "double": "Rating: 2, or perhaps rating: 4",
            "none": "I cannot judge this one."}


def script(question, image):
    """A scripted model: its answer word depends on the question (8 fixture questions)."""
    for key, word in (("colour", "right"), ("holding", "wrong"), ("taller", "right"), ("How many", "double"),
                      ("left", "plain"), ("day or night", "none"), ("Describe", "wrong"), ("sign", "right")):
        if key in question:
            return word
    raise AssertionError(question)


class FakeJudge:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that rates by the answer word; records
    every request; ``fail`` holds HTTP codes to answer with before the next good reply."""

    def __init__(self):
        self.requests, self.fail = [], []
        self.verdict = VERDICTS.__getitem__  # answer text -> the judge's reply
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if judge.fail:
                    self.send_response(judge.fail.pop(0))
                    self.end_headers()
                    return
                prompt = body["messages"][0]["content"]
                answer = prompt.split("LMM answer: ", 1)[1].split("\n", 1)[0].strip()
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": judge.verdict(answer)}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge():
    with FakeJudge() as j:
        yield j


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i in range(8):
        Image.new("RGB", (6, 4), (30 * i, 0, 0)).save(d / f"fx{i:02d}.jpg")
    return d


def test_rating_parser_as_mmhal_bench_reads_it():
    assert mmhal.parse_rating("The answer is fine.\nRating: 5") == 5
    assert mmhal.parse_rating("RATING: 6") == 6
    assert mmhal.parse_rating("rating: 2 ... on reflection rating: 4") == 0  # two ratings → 0
    assert mmhal.parse_rating("I would give it a 4.") == 0  # none → 0
    assert mmhal.parse_rating("Rating: 3 (Rating: 3)") == 3  # the same rating twice is one rating
    assert mmhal.parse_rating("") == 0 and mmhal.parse_rating(None) == 0


def test_scores_by_hand():
    s = mmhal.mmhal_scores([5, 1, 5, 0, 3, 0, 1, 5], ["a", "b", "a", "b", "c", "c", "d", "d"])
    assert s["score"] == pytest.approx(20 / 8) and s["hallucination_rate"] == pytest.approx(4 / 8)  # 1, 0, 0, 1
    assert s["per_type"] == {"a": 5.0, "b": 0.5, "c": 1.5, "d": 3.0} and s["n"] == 8


def test_loader_on_the_public_format():
    items = mmhal.load_questions(DATA / "response_template.json")
    assert len(items) == 8 and [it.question_type for it in items] == list(mmhal.QUESTION_TYPES)
    assert items[0].image == "fx00.jpg" and items[0].image_content == ["Bus", "Street", "Person"]
    with pytest.raises(DataError, match=r"missing_content.json, item 0: missing field\(s\) image_content"):
        mmhal.load_questions(DATA / "missing_content.json")


def test_task_with_a_fake_judge(tmp_path, images, judge, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test-123")
    task = get_task("mmhal", questions=str(DATA / "response_template.json"), images=str(images),
                    judge=mmhal.Judge(judge.url, "judge-model-x", key_env="FAKE_JUDGE_KEY"))
    s = run_task(NoBackbone(), task, [ScriptedMethod(script)], tmp_path / "run")["scripted"]
    # right 5, wrong 1, right 5, double 0, plain 3, none 0, wrong 1, right 5
    assert s["score"] == pytest.approx(20 / 8) and s["hallucination_rate"] == pytest.approx(4 / 8)
    assert s["per_type"]["counting"] == 0 and s["per_type"]["relation"] == 3 and s["judged"] == s["n"] == 8
    assert len(judge.requests) == 8
    r = judge.requests[0]
    assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test-123"
    assert r["body"]["model"] == "judge-model-x" and r["body"]["temperature"] == 0
    prompt = r["body"]["messages"][0]["content"]
    assert "Image contents: Bus, Street, Person" in prompt and "Reference answer: The bus is red." in prompt
    run_json = (tmp_path / "run" / "run.json").read_text()
    assert "sk-test-123" not in run_json and "judge-model-x" in run_json
    rec = json.loads((tmp_path / "run" / "items-scripted.jsonl").read_text().splitlines()[3])
    assert rec["rating"] == 0 and rec["judge_response"] == VERDICTS["double"]


def test_an_interrupted_run_resumes_without_judging_twice(tmp_path, images, judge):
    task = get_task("mmhal", questions=str(DATA / "response_template.json"), images=str(images),
                    judge=mmhal.Judge(judge.url, "m"))
    with pytest.raises(Stop):
        run_task(NoBackbone(), task, [ScriptedMethod(script, stop_after=1)], tmp_path / "run", batch_size=3)
    assert len(judge.requests) == 3
    again = ScriptedMethod(script)
    s = run_task(NoBackbone(), task, [again], tmp_path / "run", batch_size=3)["scripted"]
    assert len(judge.requests) == 8 and len(again.asked) == 5 and s["judged"] == 8
    assert s["score"] == pytest.approx(20 / 8)


def test_judge_errors(tmp_path, images, judge, monkeypatch):
    monkeypatch.setattr(mmhal.time, "sleep", lambda s: None)
    j = mmhal.Judge(judge.url, "m", retries=2)
    judge.fail = [503, 500]
    assert mmhal.parse_rating(j.rate("LMM answer: right\n")) == 5  # retried past two server errors
    judge.fail = [401]
    with pytest.raises(mmhal.JudgeError, match=r"judge http://127.0.0.1:\d+/v1/chat/completions: HTTP 401"):
        j.rate("LMM answer: right\n")
    judge.fail = [500, 500, 500]
    task = get_task("mmhal", questions=str(DATA / "response_template.json"), images=str(images), judge=j)
    with pytest.raises(mmhal.JudgeError, match="no answer after 3 tries"):
        run_task(NoBackbone(), task, [ScriptedMethod(script)], tmp_path / "run")
    # nothing half-judged was written: the rerun answers and judges every item
    assert not (tmp_path / "run" / "items-scripted.jsonl").read_text().strip()


def test_without_a_judge_only_answers(tmp_path, images, judge):
    task = get_task("mmhal", questions=str(DATA / "response_template.json"), images=str(images))
    s = run_task(NoBackbone(), task, [ScriptedMethod(script)], tmp_path / "run")["scripted"]
    assert s["judged"] == 0 and s["n"] == 8 and s["score"] is None and "no judge" in s["note"]
    assert judge.requests == []


def test_cli_runs_the_embedded_model_and_the_judge(tmp_path, judge, capsys):
    import torch

    from adapt.world import make_split

    (tmp_path / "img").mkdir()
    for i, scene in enumerate(make_split("test", 8)):
        scene.image().save(tmp_path / "img" / f"fx{i:02d}.jpg")
    judge.verdict = lambda answer: "Rating: 4" if "there is" in answer else "Rating: 2"
    threads = torch.get_num_threads()
    try:
        rc = main(["eval", "--task", "mmhal", "--questions", str(DATA / "response_template.json"), "--images",
                   str(tmp_path / "img"), "--judge-url", judge.url, "--judge-model", "fake", "--method", "greedy",
                   "--threads", "1", "--max-new-tokens", "16", "--out", str(tmp_path / "run")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0 and len(judge.requests) == 8
    recs = [json.loads(x) for x in (tmp_path / "run" / "items-greedy.jsonl").read_text().splitlines()]
    ratings = [4 if "there is" in r["answer"] else 2 for r in recs]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())["greedy"]
    assert [r["rating"] for r in recs] == ratings and s["score"] == pytest.approx(sum(ratings) / 8)
    assert "| hallucination_rate |" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--judge-url", "http://127.0.0.1:9/v1"], "task mmhal: --judge-url needs --judge-model"),
    ([], "task mmhal needs --questions"),
])
def test_cli_errors_are_one_line(extra, message, capsys, images):
    argv = ["eval", "--task", "mmhal", "--images", str(images), "--out", "/tmp/never", *extra]
    if "--judge-url" in extra:
        argv += ["--questions", str(DATA / "response_template.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
