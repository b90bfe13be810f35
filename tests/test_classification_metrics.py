"""The classifier's confusion matrix: every cell, in the report, the Markdown and the console table."""

from pocketlm.training.classification_metrics import (
    classification_report,
    confusion_matrix,
    format_confusion_matrix,
    report_markdown,
)

NAMES = ["World", "Sports", "Business", "Sci/Tech"]
# Rows: true label, columns: predicted. Asymmetric and with a class never predicted (Sci/Tech), so that a
# transposed, reordered or truncated matrix differs.
LABELS = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
PREDICTIONS = [0, 0, 1, 2, 1, 1, 0, 2, 1, 2, 0]
EXPECTED = [
    [2, 1, 1, 0],
    [0, 2, 0, 0],
    [1, 1, 1, 0],
    [1, 0, 1, 0],
]


def test_each_cell_counts_true_label_by_prediction():
    assert confusion_matrix(LABELS, PREDICTIONS, len(NAMES)).tolist() == EXPECTED
    report = classification_report(LABELS, PREDICTIONS, NAMES)
    assert report["confusion_matrix"] == EXPECTED and report["examples"] == len(LABELS)
    for i, name in enumerate(NAMES):  # the matrix agrees with the report's own counts
        assert sum(EXPECTED[i]) == report[name]["support"]
    assert sum(EXPECTED[i][i] for i in range(len(NAMES))) / len(LABELS) == report["accuracy"]


def test_the_cells_are_printed_in_place():
    markdown = report_markdown(classification_report(LABELS, PREDICTIONS, NAMES), "test")
    rows = markdown.split("Confusion matrix")[1].strip().splitlines()[2:]
    assert rows[0] == "| true \\ predicted | World | Sports | Business | Sci/Tech |"
    assert rows[2:] == [f"| {name} | " + " | ".join(map(str, row)) + " |" for name, row in zip(NAMES, EXPECTED)]
    console = format_confusion_matrix(confusion_matrix(LABELS, PREDICTIONS, len(NAMES)), NAMES).splitlines()
    assert [line.split()[-4:] for line in console[1:]] == [[str(v) for v in row] for row in EXPECTED]
    assert [line.split()[0] for line in console[1:]] == NAMES
