"""What a sweep will cost before it runs: calibration figures, and plans made from them."""
