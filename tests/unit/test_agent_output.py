"""The agent's op ``output``: reading pieces of files (tail, offset, eof, UTF-8 boundaries,
refusals), Slurm filename patterns, ``scontrol show job`` records recorded from Slurm 22.05
(tests/unit/recorded), and the op flow against a fake runner. Real temp files; Slurm is faked."""

from __future__ import annotations

import base64
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker.agent import hpcb_agent as agent
from broker.agent.hpcb_agent import Agent, AgentError, read_chunk
from broker.agent.protocol import MAX_OUTPUT_BYTES, AgentResponse
from tests.unit.test_agent import USER, getpwnam, is_reader, run_reader

RECORDED = Path(__file__).parent / "recorded"
KIB = 1024


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# ---- read_chunk: tail, offset, eof --------------------------------------------------------------


def test_tail_of_a_large_file_is_its_last_max_bytes(tmp_path: Path) -> None:
    # GIVEN a 100 KiB file
    data = bytes(i % 251 % 128 for i in range(100 * KIB))
    path = write(tmp_path / "out", data)
    # WHEN its tail is read (no offset) with the protocol's maximum
    chunk = read_chunk(path, None, MAX_OUTPUT_BYTES)
    # THEN the last 64 KiB, at offset 36 KiB, up to the end
    assert (chunk["size"], chunk["offset"], chunk["length"], chunk["eof"]) == (
        100 * KIB,
        36 * KIB,
        64 * KIB,
        True,
    )
    assert chunk["data"].encode() == data[36 * KIB :]


def test_read_from_offset_zero_stops_at_max_bytes(tmp_path: Path) -> None:
    # GIVEN a 100 KiB file / WHEN read from offset 0
    path = write(tmp_path / "out", b"x" * (100 * KIB))
    chunk = read_chunk(path, 0, MAX_OUTPUT_BYTES)
    # THEN the first 64 KiB, not at the end yet
    assert (chunk["offset"], chunk["length"], chunk["eof"]) == (0, 64 * KIB, False)


def test_read_of_the_rest_reaches_eof(tmp_path: Path) -> None:
    # GIVEN the first chunk's end as the next offset
    path = write(tmp_path / "out", b"x" * (100 * KIB))
    # WHEN the rest is read / THEN 36 KiB and eof
    chunk = read_chunk(path, 64 * KIB, MAX_OUTPUT_BYTES)
    assert (chunk["offset"], chunk["length"], chunk["eof"]) == (64 * KIB, 36 * KIB, True)


def test_tail_of_a_small_file_is_the_whole_file(tmp_path: Path) -> None:
    # GIVEN a file smaller than max_bytes / WHEN its tail is read / THEN all of it, from 0
    chunk = read_chunk(write(tmp_path / "out", b"hello\n"), None, MAX_OUTPUT_BYTES)
    assert chunk == {
        "path": str(tmp_path / "out"),
        "size": 6,
        "offset": 0,
        "length": 6,
        "data": "hello\n",
        "eof": True,
    }


@pytest.mark.parametrize("offset", [6, 1000])
def test_offset_at_or_past_the_end_reads_nothing(tmp_path: Path, offset: int) -> None:
    # GIVEN a 6-byte file / WHEN read at or past its end
    chunk = read_chunk(write(tmp_path / "out", b"hello\n"), offset, 10)
    # THEN no data, eof, the offset as asked, and the real size
    assert (chunk["offset"], chunk["length"], chunk["data"], chunk["eof"], chunk["size"]) == (
        offset,
        0,
        "",
        True,
        6,
    )


def test_empty_file_is_an_empty_chunk_at_eof(tmp_path: Path) -> None:
    # GIVEN a job that printed nothing / WHEN its tail is read / THEN empty, eof
    chunk = read_chunk(write(tmp_path / "out", b""), None, 10)
    assert (chunk["size"], chunk["length"], chunk["eof"]) == (0, 0, True)


# ---- read_chunk: UTF-8 --------------------------------------------------------------------------


def test_chunks_never_split_a_character_so_they_concatenate_to_the_text(tmp_path: Path) -> None:
    # GIVEN text of 1-, 2-, 3- and 4-byte characters
    text = "aé€😀" * 50
    path = write(tmp_path / "out", text.encode())
    # WHEN read chunk after chunk with an awkward size
    pieces, offset = [], 0
    while True:
        chunk = read_chunk(path, offset, 7)
        pieces.append(chunk["data"])
        offset = chunk["offset"] + chunk["length"]
        if chunk["eof"]:
            break
    # THEN no replacement characters, and the pieces are exactly the text
    assert "".join(pieces) == text


def test_tail_does_not_start_inside_a_character(tmp_path: Path) -> None:
    # GIVEN a file ending in 2-byte characters, and a tail size cutting one in half
    path = write(tmp_path / "out", "éééé".encode())
    # WHEN the last 3 bytes are asked for
    chunk = read_chunk(path, None, 3)
    # THEN the partial character is skipped: one whole "é" from offset 6
    assert (chunk["offset"], chunk["length"], chunk["data"]) == (6, 2, "é")


def test_invalid_utf8_becomes_replacement_characters(tmp_path: Path) -> None:
    # GIVEN binary output / WHEN read / THEN decoded with U+FFFD, length in bytes
    chunk = read_chunk(write(tmp_path / "out", b"ok\xff\xfe\n"), 0, 100)
    assert chunk["data"] == "ok\ufffd\ufffd\n"
    assert chunk["length"] == 5


# ---- read_chunk: refusals -----------------------------------------------------------------------


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    # GIVEN an output path that is a symbolic link to a secret
    secret = write(tmp_path / "secret", b"root:x:0:0")
    (tmp_path / "out").symlink_to(secret)
    # WHEN read / THEN the open fails (ELOOP) instead of reading the target
    with pytest.raises(OSError, match="Too many levels of symbolic links") as caught:
        read_chunk(str(tmp_path / "out"), 0, 100)
    assert caught.value.errno == errno.ELOOP


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    # GIVEN a FIFO where the output file should be
    os.mkfifo(tmp_path / "out")
    # WHEN read / THEN OUTPUT_UNREADABLE at once (no writer would ever come)
    with pytest.raises(AgentError) as caught:
        read_chunk(str(tmp_path / "out"), 0, 100)
    assert caught.value.code == agent.OUTPUT_UNREADABLE


def test_directory_is_refused(tmp_path: Path) -> None:
    # GIVEN a directory path / WHEN read / THEN OUTPUT_UNREADABLE
    with pytest.raises(AgentError) as caught:
        read_chunk(str(tmp_path), 0, 100)
    assert caught.value.code == agent.OUTPUT_UNREADABLE


def test_relative_path_is_refused() -> None:
    # GIVEN a relative path / WHEN read / THEN refused before opening anything
    with pytest.raises(AgentError) as caught:
        read_chunk("slurm-12.out", 0, 100)
    assert caught.value.code == agent.OUTPUT_UNREADABLE


# ---- filename patterns --------------------------------------------------------------------------

VALUES = {"j": "1333", "J": "1333", "A": "1329", "a": "2", "x": "arr", "u": "root", "N": "vm"}
VALUES.update({"s": "batch", "t": "0", "n": "0"})


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("/o/slurm-%j.out", "/o/slurm-1333.out"),
        ("/o/slurm-%A_%a.out", "/o/slurm-1329_2.out"),
        ("/o/%x-%u-%N.out", "/o/arr-root-vm.out"),
        ("/o/100%%-%j", "/o/100%-1333"),
        ("/o/%%j", "/o/%j"),
        ("/o/%6j-%3a", "/o/001333-002"),
        ("/o/%5x-%2N", "/o/arr-vm"),  # padding applies to numbers only
        ("/o/%J-%s-%t-%n", "/o/1333-batch-0-0"),
        ("/o/%q-%", "/o/%q-%"),  # unknown symbols stay
        ("/o/\\%j-%j", "/o/%j-%j"),  # a backslash turns expansion off
        ("/o/%20j", "/o/0000001333"),  # width capped at 10
    ],
)
def test_file_patterns_expand_as_slurmd_does(pattern: str, path: str) -> None:
    # GIVEN a Slurm filename pattern / WHEN expanded for task 2 of array 1329 (job 1333)
    # THEN the name slurmd gives the file (observed on 22.05, see recorded/README.md)
    assert agent.expand_file_pattern(pattern, VALUES) == path


def test_pattern_symbol_without_a_value_stays() -> None:
    # GIVEN no raw job id known (an array task Slurm forgot) / WHEN expanded / THEN %j stays
    assert agent.expand_file_pattern("/o/%j-%a", {"a": "2"}) == "/o/%j-2"


# ---- scontrol records ---------------------------------------------------------------------------


def test_scontrol_record_of_an_array_task() -> None:
    # GIVEN recorded `scontrol -o show job 1329_2` output
    # WHEN parsed for 1329_2
    record = agent.parse_scontrol_job(recorded("scontrol_show_job_array_task.txt"), "1329_2")
    # THEN the task's own job id and its files
    assert record is not None
    assert (record["JobId"], record["ArrayTaskId"], record["StdOut"]) == (
        "1333",
        "2",
        "/tmp/hpcb-rec/slurm-1329_2.out",
    )
    assert record["TRES"] == "cpu=1,node=1,billing=1"
    assert record["AllocNode:Sid"] == "localhost:1682"


def test_scontrol_record_of_another_job_is_not_taken() -> None:
    # GIVEN a record of job 1336 / WHEN looking for 1337 / THEN None
    assert agent.parse_scontrol_job(recorded("scontrol_show_job_percent_n.txt"), "1337") is None


def test_scontrol_paths_with_spaces_stay_whole() -> None:
    # GIVEN a working directory with a space
    line = (
        "JobId=5 JobName=x WorkDir=/shared/run 1 StdErr=/shared/run 1/slurm-5.out "
        "StdIn=/dev/null StdOut=/shared/run 1/slurm-5.out Power="
    )
    # WHEN parsed / THEN the paths keep their spaces
    record = agent.parse_scontrol_job(line, "5")
    assert record is not None
    assert record["StdOut"] == "/shared/run 1/slurm-5.out"
    assert record["Power"] == ""


@pytest.mark.parametrize(
    ("nodelist", "node"),
    [
        ("vm", "vm"),
        ("queue1-dy-c5-[3-5,9]", "queue1-dy-c5-3"),
        ("node[01-04]", "node01"),
        ("a1,b2", "a1"),
        ("None assigned", None),
        ("", None),
    ],
)
def test_first_node_of_a_node_list(nodelist: str, node: str | None) -> None:
    # GIVEN sacct's node list / WHEN reduced to the batch node / THEN its first node
    assert agent.first_node(nodelist) == node


# ---- op output ----------------------------------------------------------------------------------


#: The token of the jobs of these tests (``mine`` writes it into Slurm's records).
DEDUP = "hpcb:rjob"


def mine(record: str) -> str:
    """A recorded ``scontrol show job`` record (root's job, no comment) made alice's, with DEDUP."""
    return record.replace("UserId=root(0)", "UserId=alice(1001)").rstrip() + f" Comment={DEDUP}\n"


class FakeSlurm:
    """scontrol and sacct from canned answers; records their argv (``calls``). The output reader
    runs for real (``reads``: its argv, setpriv prefix included)."""

    def __init__(self, scontrol: tuple[int, str, str], sacct: tuple[int, str, str] | None = None):
        self.scontrol = scontrol
        self.sacct = sacct
        self.calls: list[list[str]] = []
        self.reads: list[list[str]] = []

    def __call__(
        self, argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        if is_reader(argv):
            self.reads.append(argv)
            return run_reader(argv, timeout, env)
        self.calls.append(argv)
        if argv[0] == "scontrol":
            return self.scontrol
        if argv[0] == "sacct" and self.sacct is not None:
            return self.sacct
        raise FileNotFoundError(2, "not found", argv[0])


FORGOTTEN = (1, "", recorded("scontrol_show_job_unknown.stderr"))


def output(slurm: FakeSlurm, query: dict[str, Any], **request: Any) -> dict[str, Any]:
    """The answer to an output query (as alice, for DEDUP's job, unless it says otherwise)."""
    query = {"user": USER, "token": DEDUP, **query}
    payload = {"v": 1, "op": "output", "output": query, **request}
    subject = Agent(run=slurm, lookup_user=getpwnam, environ={}, hostname="headnode")
    answer: dict[str, Any] = json.loads(
        subject.answer(base64.b64encode(json.dumps(payload).encode()).decode())
    )
    return answer


def test_output_of_a_job_slurm_remembers_uses_its_paths(tmp_path: Path) -> None:
    # GIVEN job 1336 as scontrol recorded it (StdOut with %N and %% left unexpanded),
    # moved to a temp directory, and the files the job wrote
    record = mine(recorded("scontrol_show_job_percent_n.txt")).replace(
        "/tmp/hpcb-rec", str(tmp_path)
    )
    write(tmp_path / "o-pat-1336-1336_4294967294-root-vm-%.out", b"out\n")
    write(tmp_path / "e-1336.err", b"err\n")
    slurm = FakeSlurm(scontrol=(0, record, ""))
    # WHEN both streams are asked for
    result = output(slurm, {"job_id": "1336", "streams": ["stdout", "stderr"]})
    # THEN one scontrol call, and each stream's file (%N from BatchHost, %% -> %)
    assert slurm.calls == [["scontrol", "-o", "show", "job", "1336"]]
    stdout, stderr = result["output"]
    assert (stdout["stream"], stdout["data"], stdout["eof"]) == ("stdout", "out\n", True)
    assert stdout["path"] == str(tmp_path / "o-pat-1336-1336_4294967294-root-vm-%.out")
    assert (stderr["stream"], stderr["data"]) == ("stderr", "err\n")


def test_stderr_follows_slurm_even_when_only_a_stdout_pattern_is_given(tmp_path: Path) -> None:
    # GIVEN scontrol knowing a separate stderr file, and a request with a stdout pattern only
    record = mine(recorded("scontrol_show_job_percent_n.txt")).replace(
        "/tmp/hpcb-rec", str(tmp_path)
    )
    write(tmp_path / "o.out", b"out\n")
    write(tmp_path / "e-1336.err", b"err\n")
    query = {"job_id": "1336", "streams": ["stderr"], "patterns": {"stdout": f"{tmp_path}/o.out"}}
    # WHEN stderr is asked for / THEN Slurm's stderr file
    (chunk,) = output(FakeSlurm(scontrol=(0, record, "")), query)["output"]
    assert chunk["data"] == "err\n"


def test_forgotten_job_expands_patterns_with_what_accounting_knows(tmp_path: Path) -> None:
    # GIVEN task 1329_2 gone from slurmctld, sacct knowing its raw id, name, user and node
    write(tmp_path / "arr-1333-1329_2-alice-vm.out", b"task 2\n")
    lookup = recorded("sacct_output_lookup.txt").replace("|root|vm", f"|alice|vm|{DEDUP}")
    slurm = FakeSlurm(scontrol=FORGOTTEN, sacct=(0, lookup, ""))
    query = {"job_id": "1329_2", "patterns": {"stdout": f"{tmp_path}/%x-%j-%A_%a-%u-%N.out"}}
    # WHEN its output is asked for
    (chunk,) = output(slurm, query)["output"]
    # THEN the pattern expanded with the task's own job id, name, user and node
    assert chunk["data"] == "task 2\n"
    assert slurm.calls[1] == [*agent.SACCT_OUTPUT_ARGV, "-j", "1329_2"]


def test_forgotten_job_without_accounting_uses_the_request_and_the_agent(tmp_path: Path) -> None:
    # GIVEN a forgotten job and no sacct: name from the request, user and host from the agent
    write(tmp_path / "sim-77-alice-headnode.out", b"done\n")
    query = {
        "job_id": "77",
        "job_name": "sim",
        "patterns": {"stdout": f"{tmp_path}/%x-%j-%u-%N.out"},
    }
    # WHEN read / THEN found
    (chunk,) = output(FakeSlurm(scontrol=FORGOTTEN), query)["output"]
    assert chunk["data"] == "done\n"


def test_forgotten_job_stderr_defaults_to_the_stdout_pattern(tmp_path: Path) -> None:
    # GIVEN a job submitted without --error (stderr went to the stdout file)
    write(tmp_path / "slurm-77.out", b"both\n")
    query = {
        "job_id": "77",
        "streams": ["stderr"],
        "patterns": {"stdout": f"{tmp_path}/slurm-%j.out"},
    }
    # WHEN stderr is asked for / THEN the stdout file, as Slurm does
    (chunk,) = output(FakeSlurm(scontrol=FORGOTTEN), query)["output"]
    assert (chunk["stream"], chunk["data"]) == ("stderr", "both\n")


def test_missing_file_is_output_not_found_with_the_path_tried(tmp_path: Path) -> None:
    # GIVEN a pending job: no file yet
    query = {"job_id": "77", "patterns": {"stdout": f"{tmp_path}/slurm-%j.out"}}
    # WHEN read
    (chunk,) = output(FakeSlurm(scontrol=FORGOTTEN), query)["output"]
    # THEN a permanent OUTPUT_NOT_FOUND naming the path
    assert chunk["path"] == f"{tmp_path}/slurm-77.out"
    assert chunk["error"]["code"] == agent.OUTPUT_NOT_FOUND
    assert chunk["error"]["transient"] is False


def test_forgotten_job_without_patterns_is_output_not_found(tmp_path: Path) -> None:
    # GIVEN a forgotten job and no pattern / WHEN read / THEN OUTPUT_NOT_FOUND, no path
    (chunk,) = output(FakeSlurm(scontrol=FORGOTTEN), {"job_id": "77"})["output"]
    assert chunk["error"]["code"] == agent.OUTPUT_NOT_FOUND
    assert "path" not in chunk


def test_unreachable_controller_without_patterns_is_transient() -> None:
    # GIVEN scontrol unable to reach slurmctld and no pattern to fall back on
    slurm = FakeSlurm(scontrol=(1, "", recorded("squeue_unreachable.stderr")))
    # WHEN read / THEN a transient SCHEDULER_UNAVAILABLE
    (chunk,) = output(slurm, {"job_id": "77"})["output"]
    assert chunk["error"]["code"] == agent.SCHEDULER_UNAVAILABLE
    assert chunk["error"]["transient"] is True


def test_unreachable_controller_still_reads_a_pattern(tmp_path: Path) -> None:
    # GIVEN scontrol unreachable but a pattern and the file
    write(tmp_path / "slurm-77.out", b"x\n")
    slurm = FakeSlurm(scontrol=(1, "", recorded("squeue_unreachable.stderr")))
    query = {"job_id": "77", "patterns": {"stdout": f"{tmp_path}/slurm-%j.out"}}
    # WHEN read / THEN the file
    assert output(slurm, query)["output"][0]["data"] == "x\n"


def test_expanded_path_climbing_out_is_refused(tmp_path: Path) -> None:
    # GIVEN accounting naming the job ".." (a job not submitted through the broker)
    slurm = FakeSlurm(scontrol=FORGOTTEN, sacct=(0, f"77|..|alice|vm|{DEDUP}\n", ""))
    write(tmp_path / "out", b"secret\n")
    query = {"job_id": "77", "patterns": {"stdout": f"{tmp_path}/sub/%x/out"}}
    # WHEN read / THEN the expanded path is refused, not opened
    (chunk,) = output(slurm, query)["output"]
    assert chunk["error"]["code"] == agent.OUTPUT_UNREADABLE
    assert "data" not in chunk


def test_symlinked_output_is_unreadable(tmp_path: Path) -> None:
    # GIVEN the output path replaced by a link to another file
    (tmp_path / "slurm-77.out").symlink_to(write(tmp_path / "secret", b"secret\n"))
    query = {"job_id": "77", "patterns": {"stdout": f"{tmp_path}/slurm-%j.out"}}
    # WHEN read / THEN a permanent OUTPUT_UNREADABLE, nothing of the target
    (chunk,) = output(FakeSlurm(scontrol=FORGOTTEN), query)["output"]
    assert chunk["error"]["code"] == agent.OUTPUT_UNREADABLE
    assert "data" not in chunk


@pytest.mark.parametrize(
    "query",
    [
        {"job_id": "12;id"},
        {"job_id": "12", "streams": ["stdin"]},
        {"job_id": "12", "streams": []},
        {"job_id": "12", "offset": -1},
        {"job_id": "12", "offset": "0"},
        {"job_id": "12", "max_bytes": MAX_OUTPUT_BYTES + 1},
        {"job_id": "12", "max_bytes": 0},
        {"job_id": "12", "patterns": {"stdout": "slurm-%j.out"}},
        {"job_id": "12", "patterns": {"stdout": "/tmp/../etc/shadow"}},
        {"job_id": "12", "patterns": {"other": "/tmp/x"}},
        {"job_id": "12", "job_name": "a/b"},
    ],
)
def test_malformed_output_query_is_a_bad_request(query: dict[str, Any]) -> None:
    # GIVEN a query the protocol would not produce / WHEN asked
    slurm = FakeSlurm(scontrol=FORGOTTEN)
    result = output(slurm, query)
    # THEN BAD_REQUEST before any Slurm call
    assert result["error"]["code"] == agent.BAD_REQUEST
    assert slurm.calls == []


def test_output_answer_validates_and_large_answers_are_staged(tmp_path: Path) -> None:
    # GIVEN two 100 KiB streams and a result URL (as the SSM runner sends)
    write(tmp_path / "o", b"o" * (100 * KIB))
    write(tmp_path / "e", b"e" * (100 * KIB))
    query = {
        "job_id": "77",
        "streams": ["stdout", "stderr"],
        "patterns": {"stdout": f"{tmp_path}/o", "stderr": f"{tmp_path}/e"},
    }
    uploads: list[bytes] = []
    subject = Agent(
        run=FakeSlurm(scontrol=FORGOTTEN), put=lambda u, b: uploads.append(b), lookup_user=getpwnam
    )
    query = {**query, "user": USER, "token": DEDUP}
    request = {"v": 1, "op": "output", "output": query, "result_put_url": "https://b/r"}
    # WHEN answered
    line = subject.answer(base64.b64encode(json.dumps(request).encode()).decode())
    # THEN the marker inline, and the uploaded answer is a valid response with 2 x 64 KiB tails
    assert json.loads(line)["staged"] is True
    response = AgentResponse.model_validate_json(uploads[0])
    assert [(c.stream, c.length, c.offset, c.eof) for c in response.output] == [
        ("stdout", 64 * KIB, 36 * KIB, True),
        ("stderr", 64 * KIB, 36 * KIB, True),
    ]
