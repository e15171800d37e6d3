import pytest

from netstorm.units import BANDWIDTH_UNITS, LATENCY_UNITS, SIZE_UNITS, parse_quantity


@pytest.mark.parametrize("text, expected", [
    ("1.2 Gbit/s", 1.2e9 / 8), ("790 Mbit/s", 790e6 / 8), ("790Mbps", 790e6 / 8),
    ("100 kbit/s", 1e5 / 8), ("8 bit/s", 1.0), ("5 MB/s", 5e6), ("2 GB/s", 2e9),
    ("3 kB/s", 3e3), ("1e3 B/s", 1e3), (" 7 mbit/s ", 7e6 / 8),
])
def test_bandwidth_units(text: str, expected: float) -> None:
    assert parse_quantity(text, BANDWIDTH_UNITS, "Mbit/s", "bw") == pytest.approx(expected)


def test_bare_numbers_take_the_default_unit() -> None:
    assert parse_quantity(790, BANDWIDTH_UNITS, "Mbit/s", "bw") == pytest.approx(98.75e6)
    assert parse_quantity(33, LATENCY_UNITS, "ms", "lat") == pytest.approx(0.033)
    assert parse_quantity("250 us", LATENCY_UNITS, "ms", "lat") == pytest.approx(250e-6)
    assert parse_quantity("64 MiB", SIZE_UNITS, "b", "size") == 64 * 2**20


@pytest.mark.parametrize("text, message", [
    ("5 mb/s", "unknown unit 'mb/s'"),  # bits or bytes? refuse to guess
    ("3 furlongs", "unknown unit"), ("fast", "cannot parse"), ("1e999 Mbit/s", "not a finite"),
])
def test_bad_quantities_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_quantity(text, BANDWIDTH_UNITS, "Mbit/s", "links[0].bandwidth")


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(ValueError, match="must be a number"):
        parse_quantity(True, LATENCY_UNITS, "ms", "latency")
