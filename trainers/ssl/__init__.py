"""Semi-supervised learning (Table 7, Sec. 4.4): the algorithms and their step-based loop."""
