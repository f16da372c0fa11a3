"""The message assembler, in memory: fragments joined, UTF-8 checked as it arrives."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedws.assembler import Assembler, InvalidUTF8


def assemble(is_text: bool, parts: Sequence[bytes | bytearray]) -> str | bytes | None:
    assembler = Assembler(is_text)
    result: str | bytes | None = None
    for index, part in enumerate(parts):
        result = assembler.add(part, index == len(parts) - 1)
        if index < len(parts) - 1:
            assert result is None  # nothing before the last fragment
    return result


def test_binary_fragments_are_joined_in_order() -> None:
    assert assemble(False, [b"ab", b"", b"c", bytearray(b"de")]) == b"abcde"
    assert type(assemble(False, [b"x", b"y"])) is bytes


def test_text_fragments_are_decoded_across_split_characters() -> None:
    encoded = "héllo wörld €".encode()
    # every split of the bytes, including inside a multi-byte character
    for cut in range(len(encoded) + 1):
        assert assemble(True, [encoded[:cut], encoded[cut:]]) == "héllo wörld €"
    assert assemble(True, [bytes([b]) for b in encoded]) == "héllo wörld €"


def test_invalid_utf8_fails_at_the_first_bad_byte_not_at_the_end() -> None:
    assembler = Assembler(is_text=True)
    assert assembler.add(b"valid ", False) is None
    with pytest.raises(InvalidUTF8) as caught:
        assembler.add(b"\xff", False)  # not the last fragment: fails already
    assert "invalid start byte" in caught.value.reason
    assert str(caught.value).startswith("invalid UTF-8")


def test_a_character_cut_off_by_the_end_of_the_message_is_invalid() -> None:
    assembler = Assembler(is_text=True)
    assembler.add("é".encode()[:1], False)
    with pytest.raises(InvalidUTF8):
        assembler.add(b"", True)


def test_65536_one_byte_fragments_cost_one_buffer() -> None:
    assembler = Assembler(is_text=False)
    for _ in range(65535):
        assert assembler.add(b"x", False) is None
    assert assembler.add(b"x", True) == b"x" * 65536


@given(st.text(), st.lists(st.integers(min_value=0, max_value=64), max_size=8))
def test_any_text_survives_any_fragmentation(text: str, cuts: list[int]) -> None:
    encoded = text.encode()
    points = sorted({min(c, len(encoded)) for c in cuts})
    parts = [encoded[a:b] for a, b in zip([0, *points], [*points, len(encoded)], strict=True)]
    assert assemble(True, parts) == text
