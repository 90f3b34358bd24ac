"""Benchmark harness for Tether (issue 5): `python -m bench` (see README, "Performance").

Against one PostgreSQL server it seeds the real schema with bulk SQL, starts two gRPC
servers as subprocesses -- a floor server (`bench.floor`: one raw asyncpg statement per
call) and `tether serve` -- and drives both with the same closed-loop asyncio load
generator (`bench.load`), then prints every cell with its ratio to its floor and writes
the same as JSON.
"""
