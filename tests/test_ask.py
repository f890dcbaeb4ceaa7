"""Read once, ask again: the state file's identity, ``infsum.ask``, ``infsum BOOK --state`` and the
``ask`` command, on the tiny random model (answers are nonsense: the plumbing is what is tested)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from infsum.ask import ask, is_state_file, load_questions
from infsum.cli import app
from infsum.config import MemoryConfig, SummarizeConfig
from infsum.engine import (
    InfiniReader,
    check_identity,
    convert,
    identity,
    load_state,
    save_adapter,
    save_state,
)
from infsum.engine.stream import IDENTITY_BYTES, context_bytes
from infsum.errors import CheckpointError, ConfigError
from infsum.evidence import book_evidence, central_passages, name_tokens, summary_ask
from infsum.models import load_model
from infsum.names import characters
from infsum.pipeline import summarize
from infsum.prompt import book_tokens, chat_prompt, max_new_tokens, trim_to_sentence
from infsum.readers import Book, Chapter

torch.set_num_threads(2)
runner = CliRunner()
SEG = 16
STORY = (
    "CHAPTER I\n\nThe lighthouse keeper counted the ships every night. He wrote their names in a book.\n\n"
    "CHAPTER II\n\nOne winter a ship came that had no name. The keeper rowed out to meet it.\n"
)
BOOK = Book(
    "The Keeper",
    "A. Writer",
    "en",
    (
        Chapter("One", "The keeper counted ships every night. He wrote their names in a book. " * 3),
        Chapter("Two", "One winter a ship came with no name, and he rowed out to meet it. " * 3),
    ),
    "keeper.txt",
)
OTHER = replace(BOOK, chapters=(Chapter("One", "A different book about a fox in the snow. " * 5),))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def config(tiny_model_dir: Path, **kw) -> SummarizeConfig:
    return SummarizeConfig(model=str(tiny_model_dir), words=5, memory=MemoryConfig(segment_len=SEG), **kw)


@pytest.fixture
def book_file(tmp_path: Path) -> Path:
    path = tmp_path / "keeper.txt"
    path.write_text(STORY, encoding="utf-8")
    return path


# ---------------------------------------------------------------- the state file's identity


def test_identity_round_trips_and_the_file_size_does_not_depend_on_the_book(loaded, tmp_path: Path) -> None:
    reader = InfiniReader(convert(loaded.model, MemoryConfig(segment_len=SEG)))
    tok = loaded.tokenizer
    short = replace(BOOK, title="A", chapters=BOOK.chapters[:1])
    long = replace(BOOK, title="A much longer title, with accents: é à ü " * 3, chapters=BOOK.chapters * 40)
    sizes = []
    for name, book in (("short", short), ("long", long)):
        ids = book_tokens(tok, book)[0]
        ident = identity(loaded.name, None, book)
        save_state(reader.read(ids), tmp_path / f"{name}.safetensors", identity=ident)
        back = load_state(tmp_path / f"{name}.safetensors")
        assert back.identity == ident and back.n_read == len(ids)
        sizes.append((tmp_path / f"{name}.safetensors").stat().st_size)
    assert len(book_tokens(tok, long)[0]) > 20 * len(book_tokens(tok, short)[0])
    assert sizes[0] == sizes[1]
    ident = load_state(tmp_path / "long.safetensors").identity
    assert set(ident) == {
        "model",
        "adapter",
        "adapter_sha256",
        "title",
        "author",
        "words",
        "source",
        "book_sha256",
    }
    assert ident["words"] == long.words and len(ident["book_sha256"]) == 64 and ident["adapter"] is None


def test_overlong_names_still_fit_the_fixed_identity(loaded, tmp_path: Path) -> None:
    reader = InfiniReader(convert(loaded.model, MemoryConfig(segment_len=SEG)))
    ident = identity("m" * 9000, None, replace(BOOK, title="t" * 9000))
    save_state(reader.read([1, 2, 3]), tmp_path / "s.safetensors", identity=ident)
    back = load_state(tmp_path / "s.safetensors").identity
    assert back["title"] == "t" * 256 and back["book_sha256"] == ident["book_sha256"]
    assert IDENTITY_BYTES == 8192


def test_check_identity_refuses_another_model_adapter_or_book(loaded, tmp_path: Path) -> None:
    model = convert(loaded.model, MemoryConfig(segment_len=SEG))
    adapter = tmp_path / "gates.safetensors"
    save_adapter(model, adapter, {"note": "test"})
    path = tmp_path / "s.safetensors"
    save_state(InfiniReader(model).read([1, 2, 3]), path, identity=identity("tiny", adapter, BOOK))
    state = load_state(path)
    check_identity(state, path, model="tiny", adapter=adapter, book=BOOK)  # its own: fine
    with pytest.raises(
        CheckpointError,
        match=f"^state {path} was read with model tiny, this run loads big: give --model tiny",
    ):
        check_identity(state, path, model="big", adapter=adapter)
    with pytest.raises(
        CheckpointError, match=f"^state {path} was read with gates.safetensors, this run uses no adapter"
    ):
        check_identity(state, path, model="tiny", adapter=None)
    with pytest.raises(
        CheckpointError, match=f"^state {path} holds another book \\('The Keeper', {BOOK.words} words\\)"
    ):
        check_identity(state, path, model="tiny", adapter=adapter, book=OTHER)


def test_a_state_without_identity_still_loads_and_is_logged_unchecked(loaded, tmp_path, caplog) -> None:
    reader = InfiniReader(convert(loaded.model, MemoryConfig(segment_len=SEG)))
    path = tmp_path / "old.safetensors"
    save_state(reader.read(list(range(40))), path)  # as an older infsum saved it: no identity
    state = load_state(path)
    assert state.identity == {}
    with caplog.at_level(logging.WARNING, logger="infsum"):
        check_identity(state, path, model="anything", adapter=None, book=BOOK)
    assert "records no model, adapter or book" in caplog.text


# ---------------------------------------------------------------- infsum.ask


EV_SEG = 64  # a segment with room for passages: the evidence is capped at half of it
EV_CFG = {"evidence_tokens": 40, "cast": 2}  # 32 tokens of passages (the cap), two names
NAMED = replace(  # a book with names in it: Mara, then Osric, the most mentioned
    BOOK,
    chapters=(
        Chapter("One", "Each night the keeper Mara counted the ships. Then Mara wrote to Osric. " * 3),
        Chapter("Two", "One winter a ship came with no name, and Osric rowed out with Mara and Ida. " * 2),
    ),
)


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The prompt ids of every ``InfiniReader.generate`` call from here on, in order."""
    seen: list[tuple[int, ...]] = []
    generate = InfiniReader.generate

    def recording(self, state, prompt_ids, *args, **kwargs):
        seen.append(tuple(prompt_ids))
        return generate(self, state, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(InfiniReader, "generate", recording)
    return seen


def test_ask_without_evidence_closes_with_the_bare_question(loaded, tiny_model_dir: Path, prompts) -> None:
    cfg = config(tiny_model_dir, evidence_tokens=0, cast=0)
    result = ask(BOOK, ["Who rowed out?"], cfg, model=loaded)
    tok = loaded.tokenizer
    assert prompts == [chat_prompt(tok, "Who rowed out?").closing]  # the prompt before evidence existed
    reader = InfiniReader(convert(loaded.model, MemoryConfig(segment_len=SEG)))
    state = reader.read(book_tokens(tok, BOOK)[0])
    gen = replace(SummarizeConfig().generation, max_new_tokens=max_new_tokens(5), min_new_tokens=0)
    out = reader.generate(state, chat_prompt(tok, "Who rowed out?").closing, gen, tok.eos_ids)
    assert result.answers[0].answer == trim_to_sentence(tok.decode(out, skip_special=True))
    assert result.answers[0].tokens == len(out) and result.tokens == state.n_read
    assert not result.from_state and result.title == "The Keeper" and result.state is None
    assert (result.to_dict()["evidence_tokens"], result.to_dict()["cast"]) == (0, 0)


def test_each_question_closes_after_the_books_passages_and_names(loaded, tiny_model_dir, prompts) -> None:
    cfg = replace(config(tiny_model_dir, **EV_CFG), memory=MemoryConfig(segment_len=EV_SEG))
    questions = ["Who rowed out?", "What did he count?"]
    result = ask(NAMED, questions, cfg, model=loaded)
    tok = loaded.tokenizer
    passages = central_passages(NAMED.text, tok, EV_SEG // 2)
    names = characters(c.text for c in NAMED.chapters)[:2]
    assert passages and len(names) == 2
    assert prompts == [chat_prompt(tok, summary_ask(q, passages, names)).closing for q in questions]
    assert passages[0] in tok.decode(prompts[0])
    assert (result.evidence_tokens, result.cast) == (EV_SEG // 2, 2)  # the cap: half a segment


def test_an_answer_spares_the_names_it_is_asked_with(loaded, tiny_model_dir, monkeypatch) -> None:
    spared: list[list[tuple[int, ...]]] = []
    generate = InfiniReader.generate

    def recording(self, state, prompt_ids, *args, **kwargs):
        spared.append(list(kwargs.get("spared", ())))
        return generate(self, state, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(InfiniReader, "generate", recording)
    cfg = replace(config(tiny_model_dir, **EV_CFG), memory=MemoryConfig(segment_len=EV_SEG))
    for n in (0, 1):
        ask(
            NAMED,
            ["Who rowed out?"],
            replace(cfg, generation=replace(cfg.generation, spare_names=n)),
            model=loaded,
        )
    names = characters(c.text for c in NAMED.chapters)[:1]
    assert spared == [[], name_tokens(loaded.tokenizer, names)]


# ---------------------------------------------------------------- the state's ask context


def test_a_state_carries_the_evidence_and_answers_as_the_book_does(
    loaded, tiny_model_dir, tmp_path, prompts
) -> None:
    cfg = replace(config(tiny_model_dir, **EV_CFG), memory=MemoryConfig(segment_len=EV_SEG))
    path, summary_path = tmp_path / "keeper.safetensors", tmp_path / "summary.safetensors"
    questions = ["Who rowed out?", "What did he count?"]
    read = ask(NAMED, questions, cfg, save_state=path, model=loaded)
    tok = loaded.tokenizer
    passages = central_passages(NAMED.text, tok, EV_SEG // 2)
    names = characters(c.text for c in NAMED.chapters)[:2]
    context = {"passages": passages, "names": names, "evidence_tokens": EV_SEG // 2, "cast": 2}
    assert load_state(path).context == context
    summarize(NAMED, cfg, model=loaded, state_path=summary_path)  # the summary's state carries it too
    assert load_state(summary_path).context == context
    prompts.clear()
    again = ask(path, questions, cfg, model=loaded)
    assert [a.answer for a in again.answers] == [a.answer for a in read.answers]  # greedy: the same
    assert prompts == [chat_prompt(tok, summary_ask(q, passages, names)).closing for q in questions]
    assert (again.evidence_tokens, again.cast) == (EV_SEG // 2, 2)
    # a smaller budget keeps the leading passages that fit it, counted again, and the first names
    first = len(tok.encode("\n" + passages[0]))
    prompts.clear()
    less = ask(path, questions[:1], replace(cfg, evidence_tokens=first, cast=1), model=loaded)
    assert prompts == [chat_prompt(tok, summary_ask(questions[0], passages[:1], names[:1])).closing]
    assert (less.evidence_tokens, less.cast) == (first, 1)
    prompts.clear()
    bare = ask(path, questions[:1], replace(cfg, evidence_tokens=0, cast=0), model=loaded)
    assert prompts == [chat_prompt(tok, questions[0]).closing] and (bare.evidence_tokens, bare.cast) == (0, 0)


def test_the_context_keeps_the_file_size_fixed_and_an_old_file_answers_without_it(
    loaded, tiny_model_dir, tmp_path, prompts, caplog
) -> None:
    tok = loaded.tokenizer
    reader = InfiniReader(convert(loaded.model, MemoryConfig(segment_len=EV_SEG)))
    long = replace(NAMED, chapters=NAMED.chapters * 40)
    sizes = []
    for name, book in (("short", NAMED), ("long", long)):
        path = tmp_path / f"{name}.safetensors"
        chapters = (c.text for c in book.chapters)
        evidence = book_evidence(tok, book.text, chapters, evidence_tokens=EV_SEG // 2, cast=5)
        save_state(reader.read(book_tokens(tok, book)[0]), path, context=evidence.context())
        assert load_state(path).context == evidence.context()
        sizes.append(path.stat().st_size)
    assert sizes[0] == sizes[1]
    # a context that cannot fit loses whole passages from the end, says so, and keeps the size
    huge = {"passages": ["p" * 2000] * 40 + ["last"], "names": ["Mara"], "evidence_tokens": 32, "cast": 1}
    with caplog.at_level(logging.WARNING, logger="infsum"):
        save_state(reader.read(book_tokens(tok, NAMED)[0]), tmp_path / "huge.safetensors", context=huge)
    back = load_state(tmp_path / "huge.safetensors").context
    assert context_bytes(EV_SEG) == 16 * 32 + 4096  # room for two of these passages, not three
    assert back["passages"] == ["p" * 2000] * 2 and back["names"] == ["Mara"]
    assert (back["dropped_passages"], back["dropped_names"]) == (39, 0)
    assert "39 passages and 0 names left out of it" in caplog.text
    assert (tmp_path / "huge.safetensors").stat().st_size == sizes[0]
    # a file saved before the context was kept: no evidence, and an info line says why
    old = tmp_path / "old.safetensors"
    save_state(reader.read(book_tokens(tok, NAMED)[0]), old, identity=identity(loaded.name, None, NAMED))
    assert load_state(old).context == {}
    cfg = replace(config(tiny_model_dir, **EV_CFG), memory=MemoryConfig(segment_len=EV_SEG), adapter=None)
    with caplog.at_level(logging.INFO, logger="infsum"):
        result = ask(old, ["Who rowed out?"], cfg, model=loaded)
    assert prompts == [chat_prompt(tok, "Who rowed out?").closing]
    assert (result.evidence_tokens, result.cast) == (0, 0)
    assert f"{old}: the state holds no passages or names" in caplog.text


def test_questions_do_not_see_each_other_and_a_state_answers_the_same(
    loaded, tiny_model_dir, tmp_path
) -> None:
    cfg = config(tiny_model_dir)
    path = tmp_path / "keeper.safetensors"
    both = ask(
        NAMED,
        ["What did he count?", "Who rowed out?", "What did he count?"],
        cfg,
        save_state=path,
        model=loaded,
    )
    alone = ask(NAMED, ["Who rowed out?"], cfg, model=loaded)
    assert both.answers[1].answer == alone.answers[0].answer  # the state is not changed by answering
    assert both.answers[0].answer == both.answers[2].answer
    assert both.state == str(path) and is_state_file(path)
    again = ask(path, ["Who rowed out?", "What did he count?"], cfg, model=loaded)
    assert [a.answer for a in again.answers] == [both.answers[1].answer, both.answers[0].answer]
    assert again.from_state and again.title == "The Keeper" and again.tokens == both.tokens
    assert "stream" not in again.seconds and "state" in again.seconds
    md = again.markdown()
    assert md.startswith("# Questions about The Keeper\n\n## Who rowed out?\n\n")
    assert "from a saved state" in md
    data = again.to_dict()
    assert [a["question"] for a in data["answers"]] == ["Who rowed out?", "What did he count?"]
    assert data["generation"]["min_new_tokens"] == 0 and data["generation"]["max_new_tokens"] == 8
    assert data["dtype"] == "float32"  # the tests' CPU has no native bfloat16 (conftest)


@pytest.mark.parametrize(
    ("questions", "message"),
    [([], "^no question to answer"), (["Who?", "  "], "^question 2 is empty: write the question")],
)
def test_ask_refuses_no_or_blank_questions(loaded, tiny_model_dir, questions, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ask(BOOK, questions, config(tiny_model_dir), model=loaded)


def test_ask_refuses_save_state_from_a_state(loaded, tiny_model_dir, tmp_path) -> None:
    path = tmp_path / "s.safetensors"
    with pytest.raises(ConfigError, match=f"^{path} is already a saved state: --save-state is for a book"):
        ask(path, ["Who?"], config(tiny_model_dir), save_state=tmp_path / "t.safetensors", model=loaded)


def test_load_questions(tmp_path: Path) -> None:
    qs = tmp_path / "q.txt"
    qs.write_text("Who is the keeper?\n\n  What came in winter?  \n", encoding="utf-8")
    assert load_questions(qs) == ["Who is the keeper?", "What came in winter?"]
    qs.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{qs}: no question in the file; write one question a line"):
        load_questions(qs)
    with pytest.raises(ConfigError, match="missing.txt: questions file not found"):
        load_questions(tmp_path / "missing.txt")


# ---------------------------------------------------------------- infsum BOOK --state


def test_summary_from_a_state_equals_reading_and_reads_nothing(
    loaded, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    cfg = config(tiny_model_dir)
    path = tmp_path / "s.safetensors"
    read = summarize(BOOK, cfg, model=loaded, state_path=path)
    monkeypatch.setattr(InfiniReader, "read", lambda *a, **k: pytest.fail("the book was streamed again"))
    again = summarize(BOOK, cfg, model=loaded, from_state=path)
    assert again.summary == read.summary and again.tokens == read.tokens
    assert "state" in again.seconds
    with pytest.raises(CheckpointError, match=f"^state {path} holds another book"):
        summarize(OTHER, cfg, model=loaded, from_state=path)
    with pytest.raises(ConfigError, match="only the infini strategy has a memory state to save or use"):
        summarize(BOOK, replace(cfg, strategy="lead"), from_state=path)
    with pytest.raises(ConfigError, match="written from a saved state; leave out --save-state"):
        summarize(BOOK, cfg, model=loaded, from_state=path, state_path=tmp_path / "t.safetensors")


# ---------------------------------------------------------------- the CLI


def _ask(tiny_model_dir: Path, *args: str, seg: int = SEG):
    return runner.invoke(
        app, ["ask", *args, "--model", str(tiny_model_dir), "--segment-len", str(seg), "--words", "5", "-q"]
    )


def test_cli_ask_a_book_then_its_state(tiny_model_dir: Path, book_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "keeper.safetensors"
    qs = tmp_path / "q.txt"
    qs.write_text("What came in winter?\n", encoding="utf-8")
    first = _ask(
        tiny_model_dir,
        str(book_file),
        "Who rowed out?",
        "--questions-file",
        str(qs),
        "--save-state",
        str(state),
        "--json",
    )
    assert first.exit_code == 0, first.stderr
    data = json.loads(first.stdout)
    assert [a["question"] for a in data["answers"]] == ["Who rowed out?", "What came in winter?"]
    assert data["from_state"] is False and state.is_file()
    again = _ask(tiny_model_dir, str(state), "--question", "What came in winter?", "--format", "txt")
    assert again.exit_code == 0, again.stderr
    assert again.stdout == data["answers"][1]["answer"] + "\n"
    md = _ask(tiny_model_dir, str(state), "Who rowed out?")
    assert md.stdout.startswith(
        f"# Questions about keeper\n\n## Who rowed out?\n\n{data['answers'][0]['answer']}\n"
    )


def test_cli_summary_from_a_state(tiny_model_dir: Path, book_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "keeper.safetensors"
    base = [
        str(book_file),
        "--model",
        str(tiny_model_dir),
        "--segment-len",
        str(SEG),
        "--words",
        "5",
        "--format",
        "txt",
        "-q",
    ]
    read = runner.invoke(app, [*base, "--save-state", str(state)])
    assert read.exit_code == 0, read.stderr
    again = runner.invoke(app, [*base, "--state", str(state)])
    assert again.exit_code == 0, again.stderr
    assert again.stdout == read.stdout


def test_cli_state_errors_are_one_line_exit_2(tiny_model_dir: Path, book_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "keeper.safetensors"
    assert _ask(tiny_model_dir, str(book_file), "Who?", "--save-state", str(state)).exit_code == 0
    other_model = tiny_model_dir.parent / "other-model"
    if not other_model.exists():
        from conftest import build_tiny_model_dir

        build_tiny_model_dir(other_model, seed=1)
    other_book = tmp_path / "fox.txt"
    other_book.write_text("A fox ran through the snow at night. " * 5, encoding="utf-8")
    damaged = tmp_path / "bad.safetensors"
    damaged.write_bytes(b"garbage")
    cases = [
        (
            _ask(other_model, str(state), "Who?"),
            f"error: state {state} was read with model {tiny_model_dir}, this run loads {other_model}: "
            f"give --model {tiny_model_dir}",
        ),
        (
            _ask(tiny_model_dir, str(state), "  "),
            "error: question 1 is empty: write the question, or leave it out",
        ),
        (_ask(tiny_model_dir, str(state)), "error: no question to answer: give one"),
        (
            _ask(tiny_model_dir, str(state), "Who?", "--save-state", str(tmp_path / "t.safetensors")),
            f"error: {state} is already a saved state",
        ),
        (_ask(tiny_model_dir, str(damaged), "Who?"), f"error: state file {damaged} is damaged"),
        (
            _ask(tiny_model_dir, str(tmp_path / "none.safetensors"), "Who?"),
            f"error: state file {tmp_path / 'none.safetensors'} not found: read the book first",
        ),
        (
            _ask(tiny_model_dir, str(state), "Who?", seg=32),
            "error: state was read with segment length 16",
        ),
        (
            runner.invoke(
                app,
                [
                    str(other_book),
                    "--model",
                    str(tiny_model_dir),
                    "--segment-len",
                    str(SEG),
                    "--state",
                    str(state),
                ],
            ),
            f"error: state {state} holds another book ('keeper', 31 words) than {other_book}",
        ),
        (
            runner.invoke(app, [str(book_file), "--strategy", "lead", "--state", str(state)]),
            f"error: {state}: only the infini strategy has a memory state to save or use",
        ),
    ]
    for result, message in cases:
        assert result.exit_code == 2, (message, result.stderr)
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
        assert result.stdout == ""
