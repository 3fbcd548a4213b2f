"""Shared test setup: no test reads or writes the user's ~/.cache/ablate.

One data directory per test session, so the builtin corpus's tokenizer and tokenized documents
are built once and shared by every test that trains.
"""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def session_data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ablate_data")
    previous = os.environ.get("ABLATE_DATA_DIR")
    os.environ["ABLATE_DATA_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("ABLATE_DATA_DIR", None)
    else:
        os.environ["ABLATE_DATA_DIR"] = previous
