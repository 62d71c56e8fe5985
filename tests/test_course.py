"""The teaching notebooks: stored without outputs, linked from the index, executed in a real kernel."""

import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPOSITORY / "notebooks"
COURSE = (
    "01-mlu-resnet.ipynb",
    "02-depth-begets-width.ipynb",
    "03-large-embedding-limit.ipynb",
    "04-shapes-and-sizes.ipynb",
)
BINDER = "https://mybinder.org/v2/gh/resnet-limits/resnet-limits/HEAD?urlpath="

# Every panel of a notebook is displayed under a name; this cell waits for each one's run and
# checks that it computed.
PANELS_CHECK = """
from resnet_limits_widgets.lessons import LessonPanel
panels = [value for value in list(globals().values()) if isinstance(value, LessonPanel)]
assert panels, "no panel found"
for panel in panels:
    await panel.wait()
    assert panel.result is not None, (panel.status.value, panel.message.value)
    assert panel.message.value == "", panel.message.value
print("panels computed", len(panels))
"""


def read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


@pytest.mark.parametrize("name", [*COURSE, "index.ipynb"])
def test_notebook_stored_without_outputs(name):
    notebook = read(name)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None


def test_index_links_every_notebook():
    text = "".join(cell.source for cell in read("index.ipynb").cells)
    stored = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb") if path.name != "index.ipynb")
    linked = sorted(set(re.findall(r"\]\(([\w.-]+\.ipynb)\)", text)))
    assert linked == stored
    for name in stored:
        assert f"{BINDER}lab/tree/notebooks/{name}" in text
        assert f"{BINDER}voila/render/notebooks/{name}" in text


def test_readme_links_every_course_notebook():
    readme = (REPOSITORY / "README.md").read_text()
    for name in (*COURSE, "index.ipynb"):
        assert f"{BINDER}voila/render/notebooks/{name}" in readme
        assert f"{BINDER}lab/tree/notebooks/{name}" in readme


def execute(name, extra_cells=()):
    """Execute the notebook in a python3 kernel; return it with its outputs."""
    notebook = read(name)
    notebook.cells.extend(nbformat.v4.new_code_cell(source) for source in extra_cells)
    client = NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return notebook


def outputs(notebook, output_type):
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == output_type]


@pytest.mark.slow
@pytest.mark.parametrize("name", COURSE)
def test_course_notebook_executes(name):
    notebook = execute(name, [PANELS_CHECK])

    assert outputs(notebook, "error") == []
    printed = "".join(output.get("text", "") for output in outputs(notebook, "stream"))
    assert "panels computed" in printed


def test_index_executes():
    notebook = execute("index.ipynb")
    assert outputs(notebook, "error") == []
