"""The README's main job: a Vivim forward pass over the real echo cine shipped inside pydicom."""

from __future__ import annotations

from vivim_monai.demo import main


def test_demo_segments_every_frame_of_the_real_cine(capsys):
    result = main(["--variant", "tiny", "--size", "64", "--classes", "2", "--clip-length", "4", "--overlap", "0.5"])
    assert result["input_shape"] == (1, 3, 64, 64, 30)
    assert result["output_shape"] == (1, 2, 64, 64, 30)
    printed = capsys.readouterr().out
    assert f"scan backend '{result['backend']}'" in printed and "frames/s" in printed
