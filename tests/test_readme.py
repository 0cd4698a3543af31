"""Every ```python block of README.md runs, so that the README cannot drift from the code.

The blocks of one `##` section share a namespace, in README order (a later block may use what an
earlier one made, as a reader would run them); each section starts a fresh one. All run in one
temporary directory, so relative paths (runs/copy) land there and later blocks see them.

What the test changes, all listed here and nothing else:
- SUBSTITUTIONS: exact strings of a block replaced to keep it to seconds (2000 steps -> 4). Each
  must occur in its block: a README edit that removes one fails here instead of running long.
- PRELUDES: lines run before a block that names inputs it leaves to the reader (the op's
  q, k, v, beta), small arrays of the documented shapes.
A block whose first line is `# not run by the tests: <reason>` (a GPU/TPU, a shell, a cluster) is
skipped with that reason; ```bash and other blocks are not Python and are not run.
"""

import os
import time

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SKIP_MARKER = "# not run by the tests:"

# (a string of the block to pick it, exact text in it, replacement)
_TRAIN = "train_and_evaluate(config, \"runs/copy\")"
_WSM = "merge_saved_checkpoints("
SUBSTITUTIONS = [
    # 10 steps, not 2000: a checkpoint every 5, an evaluation at the end.
    (_TRAIN, "config.num_steps = 2000", "config.num_steps = 10"),
    (_TRAIN, "warmup_steps=100", "warmup_steps=2"),
    (_TRAIN, "dict(every_steps=200", "dict(every_steps=5"),
    (_TRAIN, "dict(every_steps=500", "dict(every_steps=10"),
    (_TRAIN, "num_layers=2", "num_layers=1"),  # half the compile time of the two runs
    # The WSM run goes on from that config: a checkpoint every 2 of the 10 steps keeps 5.
    (_WSM, "warmup_steps=100", "warmup_steps=2"),
    (_WSM, "dict(every_steps=200", "dict(every_steps=2"),
]

# (a string of the block to pick it, code run first in its namespace)
PRELUDES = [
    ("o, final_state = deltajax.ops.delta_rule(", """
import jax
B, T, H, K, V = 1, 16, 2, 8, 8
q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (B, T, H, d)) for i, d in enumerate((K, K, V)))
k = k / (k ** 2).sum(-1, keepdims=True) ** 0.5
beta = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(3), (B, T, H)))
"""),
]


def python_blocks(text: str) -> list:
    """[(section heading, first line number, code)] of the ```python blocks, in order."""
    blocks, section, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("```"):
            language, start = line[3:].strip(), i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            if language == "python":
                blocks.append((section, start + 1, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


def prepared(code: str) -> str:
    """The block with its prelude and substitutions (each substitution checked to apply)."""
    for pick, old, new in SUBSTITUTIONS:
        if pick in code:
            if old not in code:
                raise AssertionError(f"README block with {pick!r} no longer contains {old!r}: "
                                     "update SUBSTITUTIONS in tests/test_readme.py")
            code = code.replace(old, new)
    prelude = "".join(text for pick, text in PRELUDES if pick in code)
    return prelude + code


BLOCKS = python_blocks(open(README).read())


def test_the_readme_has_python_blocks_and_every_substitution_and_prelude_is_used():
    assert len(BLOCKS) >= 3
    codes = [code for _, _, code in BLOCKS]
    for pick, *_ in SUBSTITUTIONS + PRELUDES:
        assert any(pick in code for code in codes), f"no README block contains {pick!r}"


def test_python_blocks_are_found_with_their_section_and_skip_marker():
    text = ("## A\n```python\nx = 1\n```\n```bash\nls\n```\n## B\n```python\n"
            f"{SKIP_MARKER} a TPU\ny = 2\n```\n")
    assert python_blocks(text) == [("A", 3, "x = 1\n"), ("B", 10, f"{SKIP_MARKER} a TPU\ny = 2\n")]


def run_blocks(blocks: list) -> None:
    """Runs the blocks in order in one namespace; a raising block fails naming its line."""
    namespace = {"__name__": "readme"}
    for section, line, code in blocks:
        if code.startswith(SKIP_MARKER):
            continue  # shown in the README; what it needs is named there
        start = time.perf_counter()
        try:
            exec(compile(prepared(code), f"README.md:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"README.md block at line {line} ({section}) raised "
                                 f"{type(error).__name__}: {error}") from error
        assert time.perf_counter() - start < 60, f"README.md:{line} is slow for the test suite"


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("section", list(dict.fromkeys(s for s, _, _ in BLOCKS)))
def test_every_python_block_of_a_section_runs(section, readme_dir, monkeypatch):
    monkeypatch.chdir(readme_dir)  # shared by the sections: later ones see earlier runs' files
    run_blocks([block for block in BLOCKS if block[0] == section])


def test_a_raising_block_fails_and_a_marked_one_is_skipped():
    with pytest.raises(AssertionError, match=r"line 7 \(X\) raised ZeroDivisionError"):
        run_blocks([("X", 7, "1 / 0\n")])
    run_blocks([("X", 9, f"{SKIP_MARKER} a TPU\n1 / 0\n")])
