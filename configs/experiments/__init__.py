"""The paper's experiments and the questions it leaves open, one file each: `rows()` names the
rows, `get_config("ROW")` gives one, `get_config("ROW,size=micro")` its CPU budget
(maepp.tools.sweep runs them all; docs/experiments.md)."""
