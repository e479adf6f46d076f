"""TextStream: streamed text never shows a stop string, not even its first characters, and never
half a UTF-8 character; what it hands out adds up to the final text."""

from __future__ import annotations

from lmforge.serve.text_stream import TextStream


class PieceTokenizer:
    """Token i decodes to PIECES[i]; byte pieces join before decoding, like byte-level BPE."""

    PIECES = [b"Hel", b"lo", b" wo", b"rld", b"\xc3", b"\xa9", b" EN", b"D", b"!"]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return b"".join(self.PIECES[i] for i in ids).decode("utf-8", errors="replace")


def run(tokens: list[int], stop: list[str]) -> tuple[list[str], bool, str]:
    stream = TextStream(PieceTokenizer(), stop)
    pieces, stopped = [], False
    for token in tokens:
        piece, stopped = stream.push(token)
        pieces.append(piece)
        if stopped:
            break
    if not stopped:
        pieces.append(stream.flush())
    return pieces, stopped, stream.text


def test_stop_string_is_cut_and_its_prefix_held_back():
    pieces, stopped, text = run([0, 1, 2, 3, 6, 7, 8], [" END"])
    assert stopped and text == "Hello world"
    assert "".join(pieces) == "Hello world"
    assert " E" not in "".join(pieces[:5])  # " EN" was held back until it became " END"


def test_held_back_text_is_released_when_it_does_not_become_a_stop():
    pieces, stopped, text = run([0, 1, 2, 3, 6, 8], [" ENDX"])
    assert not stopped and "".join(pieces) == text == "Hello world EN!"


def test_split_utf8_character_waits_for_its_second_byte():
    pieces, stopped, _ = run([0, 4, 5, 1], [])
    assert pieces[1] == "" and pieces[2] == "é" and "".join(pieces) == "Helélo"
    assert not stopped


def test_stop_string_spanning_tokens_and_the_earliest_of_several_wins():
    pieces, stopped, text = run([0, 1, 2, 3], ["rld", "lo w"])
    assert stopped and text == "Hel" and "".join(pieces) == "Hel"
