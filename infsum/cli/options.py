"""The options several commands share, defined once, and the one builder of ``SummarizeConfig``.

``RunOptions`` holds the model, memory and generation options of the commands that run a model.
A command takes them as one ``run: RunOptions`` parameter and the ``run_options`` decorator puts
them on its command line: every field for ``summarize`` and ``batch``, ``MODEL_FIELDS`` for
``passkey``. A new shared option is a field of ``RunOptions``, a line in ``RunOptions.config`` and,
if passkey takes it too, a name in ``MODEL_FIELDS``: this file only. Choices come from the
library's registries (update rules, strategies, book suffixes); a memory variant is checked against
its registry only when one is given, as that registry imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import click
import typer

from ..config import (
    DEFAULT_SEGMENT_LEN,
    DTYPES,
    UPDATE_RULES,
    GenerationConfig,
    MemoryConfig,
    SummarizeConfig,
)
from ..errors import ConfigError
from ..prompt import load_instruction
from ..readers import FORMAT_NAMES, STDIN, Book, formats, read_stream
from ..strategies import STRATEGIES
from . import logs

Command = TypeVar("Command", bound=Callable[..., Any])
CHAPTER_WORDS = 60  # --chapter-words' default
DEFAULT_VARIANT = MemoryConfig.variant
STRATEGY_CHOICES = tuple(STRATEGIES)  # infini, then the baselines it is measured against


def memory_variant(name: str) -> str:
    """``--memory-variant``: a key of ``infsum.engine.memory.VARIANTS``. That registry imports torch,
    so only a name other than the default is checked here; the library checks every name again."""
    if name != DEFAULT_VARIANT:
        from ..engine.memory import get_variant

        try:
            get_variant(name)
        except ConfigError as e:
            raise typer.BadParameter(str(e)) from None
    return name


def int_list(text: str) -> tuple[int, ...]:
    """'4k,16384' -> (4096, 16384)."""
    try:
        return tuple(
            int(float(x[:-1]) * 1024) if x.lower().endswith("k") else int(x)
            for x in text.split(",")
            if x.strip()
        )
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of token counts") from None


def float_list(text: str, n: int | None = None) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0); n = how many values are required."""
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None
    if n is not None and len(out) != n:
        raise typer.BadParameter(f"{text!r} needs exactly {n} comma-separated numbers")
    return out


def _quiet(value: bool) -> bool:
    """--quiet also hides the warnings infsum logs."""
    if value:
        logs.silence()
    return value


def open_book(book: Path, input_format: str | None, password: str | None = None) -> Path | Book:
    """BOOK as the library takes it: a path, or for ``-`` the book read from standard input in
    ``--input-format`` (txt by default); ConfigError for ``--input-format`` with a file."""
    if str(book) != STDIN:
        if input_format is not None:
            raise ConfigError(
                f"{book}: --input-format is for a book on standard input (BOOK -); a file's suffix "
                "gives its format"
            )
        return book
    return read_stream(click.get_binary_stream("stdin"), input_format or "txt", password=password)


def note_words(chapters: bool, words: int | None) -> int | None:
    """The chapter notes' length ``--chapters`` and ``--chapter-words`` ask for (None: no notes);
    ConfigError for ``--chapter-words`` without ``--chapters``."""
    if words is not None and not chapters:
        raise ConfigError("--chapter-words sets the length of chapter notes: give --chapters too")
    return (words or CHAPTER_WORDS) if chapters else None


def output_format(fmt: str | None, json_alias: bool) -> str:
    """The ``--format`` asked for (md by default; ``--json`` is json); ConfigError when ``--json``
    and another ``--format`` are both given."""
    if json_alias and fmt not in (None, "json"):
        raise ConfigError(f"--json asks for --format json, not --format {fmt}: give one of them")
    return fmt or ("json" if json_alias else "md")


# -- option types, each spelled once

BookArg = Annotated[
    Path, typer.Argument(metavar="BOOK", help=f"The book: {formats()}; - reads standard input.")
]
InputFormat = Annotated[
    Literal[FORMAT_NAMES] | None,
    typer.Option(help="Format of a book on standard input (BOOK -) [default: txt]."),
]
OutputFormat = Annotated[
    Literal["md", "json", "txt"] | None,
    typer.Option("--format", help="What stdout gets: md, json or txt (the text alone) [default: md]."),
]
JsonAlias = Annotated[bool, typer.Option("--json", help="The same as --format json.")]
Words = Annotated[int, typer.Option(min=1, help="Target summary length in words.")]
Model = Annotated[
    str | None, typer.Option(help="Model name or local directory [default: SmolLM2-135M-Instruct].")
]
SegmentLen = Annotated[int, typer.Option(min=1, help="Tokens per segment streamed through the model.")]
ExactTokens = Annotated[
    int,
    typer.Option(
        min=0,
        help="Exact tokens kept per layer beside the memory (any model, no training); 0 = none.",
    ),
]
EvidenceTokens = Annotated[
    int,
    typer.Option(
        min=0,
        help="infini and ask: tokens of the book's most central passages put before the instruction "
        "or question; 0 = none.",
    ),
]
Cast = Annotated[
    int,
    typer.Option(min=0, help="infini and ask: how many of the book's most mentioned names the prompt gives."),
]
SpareNames = Annotated[
    int,
    typer.Option(
        min=0,
        metavar="N",
        help="infini: the repetition rules spare the book's N most mentioned names, so a name is "
        "written again as the book spells it; 0 = none.",
    ),
]
PartWords = Annotated[
    int,
    typer.Option(
        min=0,
        metavar="N",
        help="infini: write the summary in parts of about N words, each as soon as its share of the "
        "book has streamed, beside that share's central passages; 0 = the whole summary after the book.",
    ),
]
Update = Annotated[Literal[UPDATE_RULES], typer.Option(help="Memory update rule.")]
Memory = Annotated[Literal["on", "off"], typer.Option(help="off: local attention only.")]
MemoryVariant = Annotated[
    str,
    typer.Option(
        parser=memory_variant,
        metavar="NAME",
        help="Memory variant (feature map and normaliser); see docs/design.md.",
    ),
]
Temperature = Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")]
Seed = Annotated[int | None, typer.Option(help="Random seed for sampling.")]
Device = Annotated[Literal["auto", "cpu", "cuda", "mps"], typer.Option(help="Where the model runs.")]
Dtype = Annotated[
    Literal[DTYPES] | None,
    typer.Option(
        show_default=False,
        help="Weight precision; auto: bfloat16 on CUDA and on CPUs with native bfloat16 "
        "(avx512_bf16, amx_bf16), decoded tokens reading int4 copies of the weights there on a "
        "CPU; else float32, decoded tokens reading float16 copies where the CPU has F16C; "
        "float32, bfloat16: those weights throughout [default: auto].",
    ),
]
Strategy = Annotated[
    Literal[STRATEGY_CHOICES],
    typer.Option(help="; ".join(f"{s.name}: {s.help}" for s in STRATEGIES.values()) + " (see README)."),
]
Adapter = Annotated[Path | None, typer.Option(help="Gate adapter file [default: the shipped one].")]
NoAdapter = Annotated[bool, typer.Option("--no-adapter", help="Run without any gate adapter.")]
Instruction = Annotated[
    str | None,
    typer.Option(
        metavar="TEXT",
        help="Ask the model this instead of the built-in summary instruction; {words} becomes --words.",
    ),
]
InstructionFile = Annotated[
    Path | None, typer.Option(metavar="FILE", help="Read the instruction from a UTF-8 text file.")
]
Password = Annotated[str | None, typer.Option(help="Password of an encrypted PDF.")]
Chapters = Annotated[
    bool, typer.Option("--chapters", help="Also a note on each chapter, written as the book streams.")
]
ChapterWords = Annotated[
    int | None, typer.Option(min=1, help=f"Length of each chapter note in words [default: {CHAPTER_WORDS}].")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", callback=_quiet, help="No progress or messages on stderr.")
]


@dataclass(frozen=True)
class RunOptions:
    """The model, memory and generation options of the commands that run a model, in the order
    their help lists them."""

    words: Words = 400
    model: Model = None
    segment_len: SegmentLen = DEFAULT_SEGMENT_LEN
    update: Update = "delta"
    memory: Memory = "on"
    memory_variant: MemoryVariant = DEFAULT_VARIANT
    exact_tokens: ExactTokens = 0
    temperature: Temperature = 0.0
    seed: Seed = None
    device: Device = "auto"
    dtype: Dtype = None
    strategy: Strategy = "infini"
    evidence_tokens: EvidenceTokens = SummarizeConfig.evidence_tokens
    cast: Cast = SummarizeConfig.cast
    spare_names: SpareNames = GenerationConfig.spare_names
    part_words: PartWords = SummarizeConfig.part_words
    adapter: Adapter = None
    no_adapter: NoAdapter = False
    instruction: Instruction = None
    instruction_file: InstructionFile = None

    def config(self, *, password: str | None = None, chapter_words: int | None = None) -> SummarizeConfig:
        """The ``SummarizeConfig`` these options ask for (reading ``--instruction-file``);
        ConfigError for both instruction options at once."""
        instruction = self.instruction
        if self.instruction_file is not None:
            if instruction is not None:
                raise ConfigError("give --instruction or --instruction-file, not both")
            instruction = load_instruction(self.instruction_file)
        return SummarizeConfig(
            model=self.model,
            adapter=None if self.no_adapter else (self.adapter or "default"),
            device=self.device,
            dtype=self.dtype,
            strategy=self.strategy,
            words=self.words,
            evidence_tokens=self.evidence_tokens,
            cast=self.cast,
            part_words=self.part_words,
            memory=MemoryConfig(
                segment_len=self.segment_len,
                update=self.update,
                enabled=self.memory == "on",
                variant=self.memory_variant,
                exact_tokens=self.exact_tokens,
            ),
            generation=GenerationConfig(
                temperature=self.temperature, seed=self.seed, spare_names=self.spare_names
            ),
            password=password,
            instruction=instruction,
            chapter_words=chapter_words,
        )


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunOptions))
# passkey: the model and memory options only (it writes no summary; its own --seed seeds the prompts)
MODEL_FIELDS = (
    "model",
    "segment_len",
    "memory",
    "memory_variant",
    "exact_tokens",
    "adapter",
    "no_adapter",
    "device",
    "dtype",
)


# ask: the model, memory, decoding and evidence options (its --words is its own: an answer is shorter)
ASK_FIELDS = (
    "model",
    "segment_len",
    "update",
    "memory",
    "memory_variant",
    "exact_tokens",
    "temperature",
    "seed",
    "device",
    "evidence_tokens",
    "cast",
    "adapter",
    "no_adapter",
)


def run_options(fields: Sequence[str] = RUN_FIELDS) -> Callable[[Command], Command]:
    """Decorator: the command's ``run: RunOptions`` parameter becomes the options ``fields`` (in
    that order, where ``run`` stands) on its command line, and reaches the command as one
    ``RunOptions``; fields not on the command line keep their defaults."""
    hints = typing.get_type_hints(RunOptions, include_extras=True)
    defaults = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    flat = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name], annotation=hints[name]
        )
        for name in fields
    ]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            params += flat if p.name == "run" else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            run = RunOptions(**{name: values.pop(name) for name in fields})
            return command(run=run, **values)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return typing.cast(Command, wrapper)

    return decorate
