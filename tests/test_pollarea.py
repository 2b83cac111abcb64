"""The poll area's words: found once per base and DMA map, and the same
answers as GuestMemory's when the area crosses regions or leaves guest RAM."""

from __future__ import annotations

import numpy as np
import pytest

from hmmgpu.device import hwdef as hw
from hmmgpu.device.memory import DeviceError, GuestMemory
from hmmgpu.device.pollarea import PollArea


def _ram(*regions: tuple[int, int]) -> tuple[GuestMemory, dict[int, np.ndarray]]:
    mem, arrays = GuestMemory(), {}
    for bus, size in regions:
        arrays[bus] = np.zeros(size, np.uint8)
        mem.add_array(bus, arrays[bus])
    return mem, arrays


def test_words_are_read_and_written_in_guest_ram() -> None:
    mem, ram = _ram((0x10000, 0x1000))
    poll = PollArea(mem)
    poll.base = 0x10100
    poll.write(hw.WATCH_WORDS_OFFSET + 12, 0x1_0000_0007)  # a u32: the high bits go
    assert mem.read_u32(0x10100 + hw.WATCH_WORDS_OFFSET + 12) == 7
    mem.write_u32(0x10100 + hw.REPLAY_WORDS_OFFSET, 0xABCD)
    assert poll.read(hw.REPLAY_WORDS_OFFSET) == 0xABCD


def test_a_new_base_or_dma_map_finds_the_area_again() -> None:
    mem, ram = _ram((0x10000, 0x1000))
    poll = PollArea(mem)
    poll.base = 0x10000
    assert poll.read(0) == 0
    poll.base = 0x20000  # not in guest RAM
    with pytest.raises(DeviceError):
        poll.read(0)
    mem.add_array(0x20000, np.full(0x1000, 0x11, np.uint8))  # now it is
    assert poll.read(0) == 0x11111111
    mem.remove(0x20000)  # and gone again: no stale window
    with pytest.raises(DeviceError):
        poll.write(0, 1)


def test_an_area_across_two_regions_is_served_word_by_word() -> None:
    split = hw.POLL_AREA_SIZE // 2 & ~3
    mem, ram = _ram((0x10000 - split, split), (0x10000, 0x1000))
    poll = PollArea(mem)
    poll.base = 0x10000 - split
    poll.write(0, 5)
    poll.write(split, 6)  # the first word of the second region
    assert (poll.read(0), poll.read(split)) == (5, 6)
    assert ram[0x10000][0] == 6


def test_a_read_only_area_is_read_but_not_written() -> None:
    mem = GuestMemory()
    mem.add_array(0x10000, np.full(0x1000, 1, np.uint8), writable=False)
    poll = PollArea(mem)
    poll.base = 0x10000
    assert poll.read(4) == 0x01010101
    with pytest.raises(DeviceError):
        poll.write(4, 0)
