"""Which clients take part in a round: how many (`num_sampled`) and which (`sample_clients`), with cases a plausible
wrong rule answers differently."""

import re

import pytest

from fedmm.errors import FedmmError
from fedmm.fl.sampling import num_sampled, sample_clients


def test_the_count_is_the_ceiling_of_the_fraction_without_float_noise():
    assert num_sampled(100, None, 0.07, 1) == 7  # 0.07 * 100 is 7.000000000000001 in floats: a bare ceil gives 8
    assert num_sampled(10, None, 0.25, 1) == 3  # ceil(2.5), not round or floor
    assert num_sampled(10, None, 1.0, 1) == 10  # the whole federation is allowed
    assert num_sampled(10, None, 0.01, 1) == 1  # ceil: a small fraction still samples one client
    assert num_sampled(10, 4, 0.01, 1) == 4  # clients_per_round wins over the fraction
    assert num_sampled(10, 2, 1.0, 5) == 5 and num_sampled(10, None, 0.1, 3) == 3  # never below min_clients
    assert num_sampled(10, 6, 1.0, 5) == 6  # ... and min_clients does not cap it


@pytest.mark.parametrize(
    "args, message",
    [
        ((10, None, 0.0, 1), "client_fraction must be in (0, 1] (got 0.0)"),
        ((10, None, 1.5, 1), "client_fraction must be in (0, 1] (got 1.5)"),
        ((10, 11, 1.0, 1), "cannot sample 11 of 10 clients per round"),
        ((10, 0, 1.0, 0), "cannot sample 0 of 10 clients per round"),
        ((3, None, 1.0, 4), "cannot sample 4 of 3 clients per round"),
    ],
)
def test_impossible_counts_are_one_line_errors(args, message):
    with pytest.raises(FedmmError, match=re.escape(message)):
        num_sampled(*args)


def test_the_sample_is_a_pure_function_of_seed_and_round():
    assert sample_clients(10, 3, 42, 1) == [1, 2, 7]  # pinned: a resumed run must draw exactly these
    assert sample_clients(10, 3, 42, 2) == [5, 6, 9]  # another round, another draw
    assert sample_clients(10, 3, 7, 1) == [1, 4, 5]  # another seed, another draw
    assert sample_clients(10, 3, 42, 1) == sample_clients(10, 3, 42, 1)
    assert sample_clients(4, 4, 42, 1) == [0, 1, 2, 3]  # everyone, in order
    for rnd in range(1, 30):
        picked = sample_clients(50, 7, 3, rnd)
        assert len(set(picked)) == 7 and picked == sorted(picked) and all(0 <= c < 50 for c in picked)
    seen = {c for rnd in range(1, 30) for c in sample_clients(50, 7, 3, rnd)}
    assert len(seen) > 40  # over many rounds nearly every client takes part: no client is favoured
