import numpy as np
import pytest

from onnx_dns.bitpack import (best_index_bits, entry_count, gap_deltas, pack_bits, positions_from_deltas,
                              read_bytes, unpack_bits)


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8, 11, 16])
def test_pack_unpack_round_trip_and_size(bits):
    values = np.random.default_rng(bits).integers(0, 2 ** bits, size=101)
    stream = pack_bits(values, bits)
    assert stream.dtype == np.uint8
    assert len(stream) == -(-101 * bits // 8) + read_bytes(bits) - 1
    np.testing.assert_array_equal(unpack_bits(stream, bits, 101), values)


def test_stream_is_little_endian_bit_order():
    np.testing.assert_array_equal(pack_bits([1, 2, 3], 2)[:1], [0b00111001])


def test_values_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="0..15"):
        pack_bits([16], 4)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_gaps_with_fillers_give_the_positions_back(bits):
    positions = np.array([0, 3, 4, 40, 300, 301, 1000])
    deltas = gap_deltas(positions, bits)
    assert deltas.max() < 2 ** bits
    assert len(deltas) == entry_count(positions, bits)
    np.testing.assert_array_equal(positions_from_deltas(deltas, bits), positions)


def test_a_gap_of_exactly_the_largest_delta_needs_no_filler():
    np.testing.assert_array_equal(gap_deltas([14, 29, 45], 4), [15, 15, 0, 1])


def test_best_index_bits_is_the_cheapest_width():
    positions = np.cumsum(np.random.default_rng(0).geometric(1 / 60, size=500)) - 1
    best = best_index_bits(positions)
    costs = [entry_count(positions, b) * b for b in range(1, 17)]
    assert entry_count(positions, best) * best == min(costs)
    assert best_index_bits(np.arange(50)) == 1
