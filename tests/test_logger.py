"""Facts about the run logger's CSV files."""
import pandas as pd

from tdmpc2.logger import Logger


def _read(path):
    return pd.read_csv(path, float_precision="round_trip")


def test_the_csv_holds_every_row_when_columns_come_and_go(tmp_path):
    logger, rows = Logger(tmp_path, quiet=True), []
    for i in range(12):
        row = dict(step=i, loss=i / 7, updates=3 * i)
        if i >= 5:
            row["extra"] = i / 3       # a new column: the file is rewritten with it
        if i == 8:
            del row["loss"]            # a missing value: an empty cell
        logger.log("train", row)
        rows.append(row)
    pd.testing.assert_frame_equal(_read(tmp_path / "train.csv"), pd.DataFrame(rows), check_dtype=False)


def test_rows_are_appended_without_rewriting_the_file(tmp_path):
    logger = Logger(tmp_path, quiet=True)
    logger.log("train", dict(step=0, loss=1.0))
    inode = (tmp_path / "train.csv").stat().st_ino
    logger.log("train", dict(step=1, loss=0.5))
    assert (tmp_path / "train.csv").stat().st_ino == inode
    assert _read(tmp_path / "train.csv")["loss"].tolist() == [1.0, 0.5]


def test_a_partial_last_row_is_dropped_on_restore(tmp_path):
    logger = Logger(tmp_path, quiet=True)
    for i in range(3):
        logger.log("train", dict(step=i, loss=i / 3))
    counts = logger.row_counts()
    with open(tmp_path / "train.csv", "a") as f:
        f.write("3,0.33")  # a run killed while writing its fourth row
    restored = Logger(tmp_path, quiet=True)
    restored.restore(counts)
    restored.log("train", dict(step=3, loss=1.0))
    assert _read(tmp_path / "train.csv")["step"].tolist() == [0, 1, 2, 3]
