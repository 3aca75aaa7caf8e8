"""The sweep spec: its model, cells, the paper's defaults, reading, path policy and capacity.

No Ray, no MLflow: the server and the command line validate specs without starting anything.
"""
