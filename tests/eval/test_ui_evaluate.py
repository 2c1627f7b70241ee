"""The Evaluate and Playground pages: model choices map to API references, results render
side by side with the user's text escaped."""

from __future__ import annotations

from ui.app import build_ui
from ui.pages.evaluate import (
    SUITE,
    benchmark_choices,
    data_choices,
    data_request,
    model_choices,
    running_scores,
    samples_table,
    suite_view,
    summary_table,
    to_ref,
)


class FakeApi:
    def models(self):
        return [{"id": 1, "name": "internvl-tiny-demo"}]

    def jobs(self):
        return [{"id": 7, "model_id": 1, "status": "succeeded", "mixture": {"datasets": [{"name": "dots"},
                                                                                         {"name": "bars"}]}},
                {"id": 8, "model_id": 1, "status": "failed", "mixture": {"datasets": [{"name": "dots"}]}}]

    def datasets(self):
        return [{"id": 2, "name": "dots", "num_val_samples": 3}]

    def benchmarks(self):
        return [{"name": "docvqa_val", "title": "DocVQA val", "registered": True, "samples": 3},
                {"name": "pope", "title": "POPE (COCO)", "registered": False, "samples": None}]


def test_choices_cover_base_models_and_succeeded_jobs():
    choices = model_choices(FakeApi())
    assert choices == [("internvl-tiny-demo (base)", "model:1"), ("job 7 fine-tune", "job:7:1")]
    assert [to_ref(v) for _, v in choices] == [{"model_id": 1}, {"job_id": 7}]


def test_data_choices_offer_datasets_and_job_mixtures():
    choices = data_choices(FakeApi())
    assert choices == [("dots #2 (3 held out)", "dataset:2"), ("mixture of job 7: dots, bars", "mixture:7"),
                       ("Benchmark suite: the registered benchmarks ticked below", SUITE)]
    assert [data_request(v, ["docvqa_val"]) for _, v in choices] == [
        {"dataset_id": 2}, {"mixture": {"job_id": 7}}, {"benchmarks": ["docvqa_val"]}]
    assert benchmark_choices(FakeApi()) == [("DocVQA val (docvqa_val, 3 samples)", "docvqa_val")]  # registered only


def test_a_suite_shows_one_table_in_published_units_with_the_change_per_model():
    ev = {"id": 5, "status": "succeeded", "done": 14, "total": 14, "summary": [{"label": "base"}],
          "benchmarks": {"benchmarks": [{"name": "docvqa_val"}, {"name": "mme"}]}}
    tab = {"models": ["base", "<job 3>"], "rows": [
        {"benchmark": "docvqa_val", "title": "DocVQA val", "figure": "anls", "n": 3, "unit": "percent",
         "published": [50.0, 66.66666]},
        {"benchmark": "mme", "title": "MME", "figure": "mme_perception", "n": 4, "unit": "points",
         "published": [150.0, None]},
        {"benchmark": "ocrbench", "title": None, "figure": "ocrbench", "n": 2, "unit": "count",
         "published": [2, 1]}]}
    html = suite_view(ev, tab)
    assert "Benchmark suite: docvqa_val, mme" in html
    assert "<b>DocVQA val</b>" in html and "anls (%)" in html and "50.0" in html and "66.7" in html and "+16.7" in html
    assert "mme_perception (points)" in html and "150.0" in html and "–" in html
    assert "<b>ocrbench</b>" in html and "ocrbench (right)" in html and "-1" in html
    assert "&lt;job 3&gt;" in html and "<job 3>" not in html
    running = suite_view({**ev, "status": "running", "samples_per_second": 2.345, "done": 4}, None)
    assert "The table appears when the run ends." in running and "4 / 14 outputs · 2.35 samples/s" in running


def test_mixture_results_show_every_dataset_and_the_overall_score():
    ev = {"id": 4, "status": "succeeded", "done": 10, "total": 10, "summary": [
        {"label": "base", "n": 5, "metrics": {"exact_match": 0.6}, "datasets": [
            {"name": "dots", "n": 3, "metrics": {"exact_match": 2 / 3}},
            {"name": "<bars>", "n": 2, "metrics": {"exact_match": 0.5}}]}]}
    html = summary_table(ev)
    assert "overall (every sample once)" in html and "0.600" in html
    assert "exact_match · dots" in html and "(n=3)" in html and "0.667" in html
    assert "&lt;bars&gt;" in html and "0.500" in html and "<bars>" not in html
    res = {"models": ["base"], "items": [
        {"dataset": "dots", "scores": [{"exact_match": 1.0}]}, {"dataset": "bars", "scores": [{"exact_match": 0.0}]},
        {"dataset": "dots", "scores": [{"exact_match": 0.0}]}]}
    (live,) = running_scores(res)
    assert live["metrics"] == {"exact_match": 1 / 3}
    assert live["datasets"] == [{"name": "dots", "n": 2, "metrics": {"exact_match": 0.5}},
                                {"name": "bars", "n": 1, "metrics": {"exact_match": 0.0}}]
    table = samples_table({**res, "samples": 3, "differing": 0, "items": [
        {"id": "0", "dataset": "dots", "question": "q", "answers": ["a"], "predictions": ["a"]}]},
        only_differences=False)
    assert "<th>Dataset</th>" in table and "<td>dots</td>" in table


def test_results_render_side_by_side_and_escaped():
    ev = {"id": 3, "status": "succeeded", "done": 4, "total": 4, "summary": [
        {"label": "base", "n": 2, "metrics": {"exact_match": 0.0}},
        {"label": "job 7", "n": 2, "metrics": {"exact_match": 1.0}}]}
    html = summary_table(ev)
    assert "0.000" in html and "1.000" in html and "job 7" in html and "+1.000" in html  # the change from base
    res = {"models": ["base", "job 7"], "samples": 2, "differing": 1, "items": [
        {"id": "0", "question": "<b>colour?</b>", "answers": ["red"], "predictions": ["<script>", "red"],
         "differ": True},
        {"id": "1", "question": "same", "answers": ["blue"], "predictions": ["blue", "blue"], "differ": False}]}
    html = samples_table(res)
    assert "1 of 2 samples differ" in html
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;colour?" in html
    assert "same" not in html and "same" in samples_table(res, only_differences=False)


def test_scores_so_far_while_the_evaluation_runs():
    res = {"models": ["base", "job 7"], "items": [
        {"scores": [{"exact_match": 0.0}, {"exact_match": 1.0}]},
        {"scores": [{"exact_match": 1.0}, None]}]}
    live = running_scores(res)
    assert live == [{"label": "base", "n": 2, "metrics": {"exact_match": 0.5}},
                    {"label": "job 7", "n": 1, "metrics": {"exact_match": 1.0}}]
    html = summary_table({"id": 1, "status": "running", "done": 3, "total": 4, "summary": []}, live)
    assert "Scores so far" in html and "0.500" in html and "3 / 4 outputs" in html


def test_studio_has_evaluate_and_playground_tabs():
    demo = build_ui("http://127.0.0.1:9")
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"vl-tab-evaluate", "vl-tab-playground", "vl-tab-compare", "vl-eval-run", "vl-chat", "vl-chat-stop",
            "vl-cmp-pick"} <= ids


class ChatApi:
    """Records what the playground sends; answers with two pieces, or refuses."""

    def __init__(self, refuse_after: int = 99) -> None:
        self.sent: list[list[dict]] = []
        self.refuse_after = refuse_after

    def chat_stream(self, model_id, messages, image_b64, job_id, max_new_tokens):
        from ui.client import ApiError

        self.sent.append([dict(m) for m in messages])
        if len(self.sent) > self.refuse_after:
            raise ApiError("invalid chat request", [{"field": "messages", "message": "bad"}], status=422)
        yield f"answer {len(self.sent)}"
        yield "."


def test_follow_ups_send_the_conversation_as_plain_strings():
    """The Chatbot's display (content parts, error marks) never reaches the API: each request
    is the answered turns as {role, content} strings plus the new message."""
    from ui.pages.playground import Conversation, answer

    api, conv = ChatApi(refuse_after=2), Conversation()
    for text in ("What colour?", "And the shape?", "Big?"):
        *_, (shown, status) = answer(api, conv, 1, None, text, None)
    assert api.sent[1] == [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "answer 1."},
                           {"role": "user", "content": "And the shape?"}]
    assert all(isinstance(m["content"], str) for msgs in api.sent for m in msgs)
    # The refused third message is shown with the API's problem, and is not a turn of the conversation.
    assert "not answered" in shown[-1]["content"] and "messages" in status and "bad" in status
    assert [m["content"] for m in conv.turns] == ["What colour?", "answer 1.", "And the shape?", "answer 2."]
