"""Transfer learning (the paper's Sec. 4.3, Table 6) as algorithms of the semi-supervised loop."""
