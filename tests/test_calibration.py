"""The estimator calibration in docs/calibration/ is reproducible and its ranges follow from its table."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import calibrate_estimators as calibration  # noqa: E402

from actid.calibration import RANGES, trust, worst  # noqa: E402

TABLE = ROOT / "docs" / "calibration" / "calibration.csv"


@pytest.mark.parametrize("cell", [("gaussian", 10, 1000, 0), ("sphere", 20, 500, 2), ("cube", 5, 2000, 1)])
def test_committed_fits_are_reproduced(cell):
    committed = pd.read_csv(TABLE).set_index(["kind", "d", "n", "seed", "estimator"])["estimate"]
    for row in calibration.fit_cell(*cell):
        key = (row["kind"], row["d"], row["n"], row["seed"], row["estimator"])
        assert row["estimate"] == pytest.approx(committed[key], rel=1e-4), key  # another CPU: last bits may differ


def test_ranges_follow_from_the_table_and_trust_reads_them():
    record = json.loads(RANGES.read_text())
    assert record["ranges"] == calibration.ranges(pd.read_csv(TABLE), record["tolerance"])
    twonn_1000 = record["ranges"]["twonn"]["1000"]
    assert twonn_1000["accurate_up_to"] == 5 and 60 < twonn_1000["calibrated_below"] < 80
    assert trust(4.0, 1000) == "accurate"
    assert trust(30.0, 1500) == "biased"
    assert trust(190.0, 1000) == "outside"  # the memorization runs' hidden-layer ID
    assert trust(3.0, 100) == "outside"  # fewer points than any calibrated n


def test_the_data_have_the_stated_dimension():
    sphere = calibration.sample("sphere", 3, 500, 0)
    assert sphere.shape == (500, 4) and (sphere.norm(dim=1) - 1).abs().max() < 1e-12
    cube = calibration.sample("cube", 4, 500, 0)
    assert cube.shape == (500, 4) and 0 <= cube.min() and cube.max() <= 1
    with pytest.raises(ValueError, match="unknown kind"):
        calibration.sample("torus", 2, 10, 0)
    assert worst(["accurate", None, "outside", "biased"]) == "outside" and worst([None]) is None


def test_flag_reads_each_id_with_the_points_of_its_layer():
    import pandas as pd
    from actid.calibration import flag
    rows = pd.DataFrame({"id/a": [4.0, 30.0], "id/b": [3.0, 150.0], "id_points/a": [1000, 1000],
                         "id_points/b": [1000, 400], "llid": [3.0, 150.0], "pid": [4.0, 150.0],
                         "id_mle/a": [4.2, 28.0], "id_mle/b": [3.1, 20.0], "id_mle/llid": [3.1, 20.0]})
    assert flag(rows.iloc[:1], "llid") == "accurate"
    assert flag(rows, "id/a") == "biased"
    assert flag(rows, "llid") == "outside"  # 150 from 400 points: fewer than any calibrated n
    assert flag(rows, "id_mle/llid", "mle") == "outside"  # the second row's layer b has 400 points
    assert flag(rows.drop(columns=["id_points/a", "id_points/b"]), "llid") is None


def test_calibrated_limit_is_the_ranges_upper_end_for_the_largest_calibrated_n_not_above_n():
    from actid.calibration import calibrated_limit
    ranges = json.loads(RANGES.read_text())["ranges"]["twonn"]
    assert calibrated_limit(900) == ranges["500"]["calibrated_below"]
    assert calibrated_limit(10_000) == ranges["10000"]["calibrated_below"]
    assert calibrated_limit(499) is None
    assert trust(calibrated_limit(900) + 1, 900) == "outside" and trust(calibrated_limit(900) - 1, 900) != "outside"
