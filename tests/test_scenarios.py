import pytest

from optinc_jax import SCENARIOS, area_ratio, get_scenario, make_scenario, register_scenario


def test_table_one_rows():
    assert set(SCENARIOS) >= {"8b4s", "8b8s", "8b16s", "16b4s"}
    assert get_scenario("8b4s").approx == (1, 2, 3, 4, 5, 6)
    assert get_scenario("8b8s").approx == (2, 3, 4, 5, 6, 7)
    assert get_scenario("8b16s").approx == tuple(range(2, 10))
    assert get_scenario("16b4s").approx == (4, 5, 6)
    assert get_scenario("16b4s").layers_string == "4-64-128-256-512-256-128-64-8"
    paper_ratio = {"8b4s": 0.393, "8b8s": 0.409, "8b16s": 0.404, "16b4s": 0.493}
    for name, ratio in paper_ratio.items():
        scenario = get_scenario(name)
        assert scenario.layers[-1] == scenario.bits // 2
        assert abs(area_ratio(scenario.layers, scenario.approx) - ratio) < 0.0015


def test_unknown_scenario_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown scenario 'nope'.*8b4s"):
        get_scenario("nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 7, "servers": 4, "layers": (4, 4)}, "even"),
        ({"bits": 8, "servers": 0, "layers": (4, 4)}, "servers"),
        ({"bits": 8, "servers": 4, "layers": (4, 8, 3)}, "end with"),
        ({"bits": 8, "servers": 4, "layers": (4, 4), "inputs": 3}, "divide"),
        ({"bits": 8, "servers": 4, "layers": (4, 8, 4), "approx": (3,)}, r"1\.\.2"),
    ],
)
def test_bad_scenarios(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_scenario("bad", **kwargs)


def test_register_user_scenario():
    scenario = make_scenario("user-4b2s", bits=4, servers=2, layers=(2, 8, 2), inputs=2)
    register_scenario(scenario, overwrite=True)
    assert get_scenario("user-4b2s") == scenario
    with pytest.raises(ValueError, match="exists"):
        register_scenario(scenario)
