"""The docs stay true to the repository: README.md and every page under docs/ link only to files and
headings that exist, name only `python -m` modules and dvc stages that exist, docs/params.md
explains every params.yaml key, and the README keeps its two one-line commands, the second the one
CI (.ci/run) runs. Pure text: no pipeline, no subprocess."""
import functools
import importlib.util
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import yaml

from tests.tiny import PROJECT_ROOT

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
PARAMS_PAGE = PROJECT_ROOT / "docs" / "params.md"
SETUP = "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt"
README_COMMANDS = [f"{SETUP} && dvc repro", f"{SETUP} && python -m pytest"]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.MULTILINE | re.DOTALL)
# Inline code: within a paragraph (a stray backtick does not pair with one paragraphs later).
CODE_SPAN = re.compile(r"(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)


def relative(path):
    return path.relative_to(PROJECT_ROOT).as_posix()


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def blank(text, pattern):
    """`text` with every match of `pattern` turned to spaces (newlines kept): offsets and line numbers hold."""
    return pattern.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), text)


def prose(text):
    """The text outside fenced code blocks and inline code spans."""
    return blank(blank(text, FENCE), CODE_SPAN)


def code(text):
    """[(offset, code)] of every fenced block (its lines between the fences) and inline code span outside them."""
    blocks = []
    for match in FENCE.finditer(text):
        opening, _, rest = match.group(0).partition("\n")
        blocks.append((match.start() + len(opening) + 1, rest.rpartition("\n")[0]))
    spans = [(match.start(2), match.group(2)) for match in CODE_SPAN.finditer(blank(text, FENCE))]
    return blocks + spans


HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)


def headings(text):
    """The ATX headings (# Title) outside fenced code blocks, as matches: group 1 the #s, group 2 the title."""
    return list(HEADING.finditer(blank(text, FENCE)))


def slug(heading):
    """GitHub's anchor for a heading: its rendered text lowercased, punctuation dropped (but - and _),
    each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>|[`*]", "", text).strip().lower()
    return "".join(ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LNM").replace(" ", "-")


@functools.cache
def anchors(path):
    """The #anchors a Markdown file has: its headings' (repeats numbered -1, -2, as GitHub does) and HTML ids."""
    text = path.read_text(encoding="utf-8")
    found, seen = set(), {}
    for heading in headings(text):
        base = slug(heading.group(2))
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    found |= set(re.findall(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", text))
    return found


def links(text):
    """[(offset, target)] of the inline links and images and the reference definitions, outside code."""
    outside = prose(text)
    inline = [(match.start(1), match.group(1)) for match in re.finditer(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)", outside)]
    defined = [(match.start(1), match.group(1)) for match in re.finditer(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", outside, re.MULTILINE)]
    return inline + defined


def test_there_are_docs_to_check():
    assert PROJECT_ROOT / "README.md" in DOCS and len(DOCS) >= 2, DOCS


def test_relative_links_resolve_to_files_and_headings():
    broken = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for offset, target in links(text):
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, ...
                continue
            where = f"{relative(doc)}:{line_of(text, offset)}: ({target})"
            path_part, _, anchor = target.partition("#")
            linked = (doc.parent / unquote(path_part)).resolve() if path_part else doc
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif PROJECT_ROOT not in [linked, *linked.parents]:
                broken.append(f"{where}: outside the repository")
            elif anchor and linked.suffix == ".md" and unquote(anchor).lower() not in anchors(linked):
                broken.append(f"{where}: no heading #{anchor} in {relative(linked)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def param_names(params, prefix=""):
    """params.yaml's leaf keys as dotted names (a list value is one leaf: quantize.op_types)."""
    names = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        names += param_names(value, f"{name}.") if isinstance(value, dict) and value else [name]
    return names


def documented(name, page):
    """Whether `page` names the param `name` (e.g. train.learning_rate): the dotted name anywhere, in
    backticks or not; or, under a heading that names its section (## train), its key in backticks
    (`learning_rate` or `learning_rate: ...`), as a table's cell (| learning_rate |) or a YAML line (learning_rate: ...)."""
    if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", page):
        return True
    section, _, key = name.rpartition(".")
    key = re.escape(key)
    found = headings(page)
    for i, heading in enumerate(found):
        if not re.search(rf"(?<![\w.]){re.escape(section)}(?![\w.])", heading.group(2)):
            continue
        level = len(heading.group(1))
        end = next((h.start() for h in found[i + 1:] if len(h.group(1)) <= level), len(page))
        if re.search(rf"`{key}(?:`|:)|\|\s*`?{key}`?\s*\||^\s*{key}:", page[heading.end():end], re.MULTILINE):
            return True
    return False


FILE_SUFFIXES = {"onnx", "py", "csv", "json", "md", "yaml", "yml", "txt", "tsv", "safetensors", "bin", "lock"}


def stale_params(page, params):
    """The `section.key` names in inline code or code blocks of `page` whose section is one of params.yaml's
    but that are no param there (renamed or removed); file names (`model.onnx`) are not params."""
    names = set(param_names(params))
    tokens = {token for _, snippet in code(page) for token in re.findall(r"(?<![\w./-])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?![\w/])", snippet)}
    return sorted(token for token in tokens if token.split(".")[0] in params and token.rsplit(".", 1)[-1] not in FILE_SUFFIXES
                  and token not in names and not any(name.startswith(token + ".") for name in names))


def test_documented_accepts_the_usual_ways_to_write_a_param():
    assert documented("train.learning_rate", "| `train.learning_rate` | 5e-5 | train, export |")
    assert documented("train.learning_rate", "Set train.learning_rate to 1e-4.")
    assert documented("train.learning_rate", "## `train`\n\n| `learning_rate` | 5e-5 |")
    assert documented("train.learning_rate", "## train: fine-tuning\n\n- `learning_rate: 5.0e-5`: the peak rate")
    assert documented("train.learning_rate", "## train\n\n```yaml\nlearning_rate: 5.0e-5\n```")
    assert not documented("train.learning_rate", "## export\n\n| `learning_rate` |")
    assert not documented("train.learning_rate", "`train.learning_rate_max`, `learning_rate`")
    assert documented("train.seed", "## train\n\n### Reproducibility\n\n`seed`")  # a subsection is still train's
    assert not documented("train.seed", "## train\n\n## split\n\n`seed`")
    params = {"train": {"epochs": 3}, "model": {"name": "x"}}
    assert stale_params("`train.epochs`, `model.onnx`, `models/model.int8.onnx`, `train.epoch`, `model`\n"
                        "```bash\ndvc exp run -S train.epochs=1 -S model.nme=y\n```", params) == ["model.nme", "train.epoch"]


def test_every_param_is_explained_in_docs_params_md():
    """docs/params.md names every params.yaml key (`documented`), and no param that is gone. Fails, not
    skips, while the page is missing: it is part of the docs (issue 27)."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    names = param_names(params)
    assert "train.learning_rate" in names and "quantize.op_types" in names, names
    assert PARAMS_PAGE.is_file(), (f"{relative(PARAMS_PAGE)} is missing: it must explain every params.yaml key "
                                   f"({len(names)}: {', '.join(names)})")
    page = PARAMS_PAGE.read_text(encoding="utf-8")
    missing = [name for name in names if not documented(name, page)]
    stale = stale_params(page, params)
    assert not missing, f"params.yaml keys that {relative(PARAMS_PAGE)} does not name: {', '.join(missing)}"
    assert not stale, f"params that {relative(PARAMS_PAGE)} names and params.yaml does not have: {', '.join(stale)}"


def module_exists(name):
    """Whether `python -m name` finds something to run: a module or a package with __main__.py, in this
    repository or installed. Nothing is imported (find_spec of a top-level name only locates it)."""
    parts = name.split(".")
    roots = [PROJECT_ROOT]
    spec = importlib.util.find_spec(parts[0]) if not (PROJECT_ROOT / parts[0]).exists() else None
    if spec is not None:
        if len(parts) == 1 and spec.submodule_search_locations is None:
            return True  # a plain module: pip's, the stdlib's
        roots = [Path(location).parent for location in spec.submodule_search_locations or []]
    for root in roots:
        path = root.joinpath(*parts)
        if path.with_suffix(".py").is_file() or (path / "__main__.py").is_file():
            return True
    return False


def test_module_exists_tells_runnable_modules_from_the_rest():
    assert all(module_exists(name) for name in ("scorer", "stages.train", "pytest", "venv", "pip", "torch.distributed.run"))
    assert not any(module_exists(name) for name in ("stages", "stages.nothing", "nothing_installed_here", "torch.nothing"))


def test_every_python_m_module_named_exists():
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"\bpython[\d.]*\s+(?:-[A-Za-z]\S*\s+)*?-m\s+([A-Za-z_][\w.]*)", text):
            name = match.group(1).rstrip(".")
            if not module_exists(name):
                missing.append(f"{relative(doc)}:{line_of(text, match.start())}: python -m {name}")
    assert not missing, "modules that do not exist:\n" + "\n".join(missing)


# dvc commands whose arguments are stages (or files), and their options that take a value.
DVC_TARGETS = re.compile(r"\bdvc\s+(repro|pull|push|fetch|status|commit|checkout|dag|exp\s+run)(?=\s|$)")
DVC_VALUE_OPTIONS = {"-r", "--remote", "-j", "--jobs", "-S", "--set-param", "-n", "--name", "-m", "--message"}


def named_stages(command_line):
    """The bare names among a dvc command's arguments (up to the end of the command), which must be stages."""
    command_line = re.split(r"\s(?:#|&&|\|\|?)|[;)`]", command_line)[0]
    names, skip = [], False
    for token in command_line.split():
        if skip:
            skip = False
        elif token.startswith("-"):
            skip = token in DVC_VALUE_OPTIONS
        elif re.fullmatch(r"[a-z_][\w-]*", token):
            names.append(token)
        elif ":" in token and not token.startswith(("<", "$", "{")):  # dvc.yaml:STAGE
            names.append(token.rsplit(":", 1)[1])
    return names


def test_named_stages_are_read_from_dvc_commands():
    """What follows `dvc SUBCOMMAND`, in a code block or a comment's `inline code` in one."""
    assert named_stages(" export quantize   # in a clone") == ["export", "quantize"]
    assert named_stages(" --force train && dvc push") == ["train"]
    assert named_stages(" download` with `revision: main` once") == ["download"]
    assert named_stages(" -r storage models/model.onnx dvc.yaml:vespa") == ["vespa"]
    assert named_stages(" --queue -S 'train.epochs=1' -n first") == []
    assert named_stages(" <stage>") == named_stages(" STAGE") == []


def test_every_stage_named_in_a_dvc_command_exists():
    stages = set(yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"])
    unknown = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for offset, snippet in code(text):
            for match in DVC_TARGETS.finditer(snippet):
                rest = snippet[match.end():].split("\n", 1)[0]
                for name in named_stages(rest):
                    if name not in stages and not (PROJECT_ROOT / name).exists():
                        unknown.append(f"{relative(doc)}:{line_of(text, offset + match.start())}: "
                                       f"dvc {match.group(1)} ... {name}")
    assert not unknown, f"stages that dvc.yaml does not have ({', '.join(sorted(stages))}):\n" + "\n".join(unknown)


def test_readme_keeps_its_two_one_line_commands_and_ci_runs_the_test_one():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    code_lines = {line.strip() for match in FENCE.finditer(readme) for line in match.group(0).splitlines()}
    for command in README_COMMANDS:
        assert command in code_lines, f"README.md has no code line `{command}`"
    ci = [line.strip() for line in (PROJECT_ROOT / ".ci/run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith("#")]
    assert README_COMMANDS[1] in commands, ".ci/run does not run the README's test command"
    # Its failure fails CI: it is the last command, or the script stops at the first failure.
    assert commands[-1] == README_COMMANDS[1] or any(re.match(r"set\s+-\w*e", line) for line in commands), ci
