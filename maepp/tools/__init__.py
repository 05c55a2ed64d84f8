"""Tools around training: parameter summary, memory and mesh guide (scaling), ahead-of-time
compiles for absent hardware (compile_check) and benchmarks (bench)."""
