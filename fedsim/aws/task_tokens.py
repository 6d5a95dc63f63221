"""The Step Functions task tokens of a run's steps: found, stored, answered.

The state machine waits on each step with `.waitForTaskToken`. Its round message reaches the
server's own SQS queue as well as the silos'; tokens found there are written into their round
items (once), so any handler invocation can answer, and a token is never taken from a silo's
record. Every call to AWS goes through `store.retrying`: a throttled answer is tried again, not
lost.

Example::

    tokens = TaskTokens(config, store)
    tokens.answer(round_key, tokens.token(run_id, "3"), outcome_json)
"""

from __future__ import annotations

import json
import time
from typing import Optional

from absl import logging

from fedsim.aws import protocol
from fedsim.aws.config import StackConfig
from fedsim.aws.store import Store, retrying

__all__ = ["TOKEN_WAIT_SECONDS", "TaskTokens"]

TOKEN_WAIT_SECONDS = 20.0  # how long a round message may take to reach the server's queue


class TaskTokens:
    """Finds each step's task token and answers it (success with the outcome, or failure)."""

    def __init__(self, config: StackConfig, store: Store, wait_seconds: float = TOKEN_WAIT_SECONDS):
        self.config, self.store, self.wait_seconds = config, store, wait_seconds
        self.sfn = config.client("stepfunctions")
        self.sqs = config.client("sqs")

    def token(self, run_id: str, step: str) -> Optional[str]:
        """The step's task token, from the round item the server wrote; None if it did not
        arrive within `wait_seconds` (a later delivery answers from the stored outcome)."""
        round_key = protocol.round_item_key(run_id, step)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            item = self.store.get_item(round_key) or {}
            if isinstance(item.get("task_token"), str):
                return item["task_token"]
            if not self.config.server_queue_url or not self.collect() and time.monotonic() > deadline:
                logging.warning("step %s of run %s: no task token from the server's queue", step, run_id)
                return None

    def collect(self) -> int:
        """Moves the tokens of the round messages in the server's queue into their round items;
        returns how many messages were read."""
        messages = retrying(lambda: self.sqs.receive_message(QueueUrl=self.config.server_queue_url, MaxNumberOfMessages=10,
                                                             WaitTimeSeconds=1).get("Messages", []), "reading the server's queue")
        for message in messages:
            try:
                body = json.loads(message["Body"])
                request = json.loads(body["Message"]) if "Message" in body else body  # the SNS envelope
                run_id, step, token = str(request["run_id"]), str(request["round"]), request["task_token"]
                protocol.parse_step(step)
                if not isinstance(token, str):
                    raise TypeError("task_token is not a string")
            except (ValueError, KeyError, TypeError) as error:
                logging.warning("server queue: a message that is not a round message was dropped (%s)", error)
            else:
                self.store.transition(protocol.round_item_key(run_id, step), "task_token", None, token)
            retrying(lambda: self.sqs.delete_message(QueueUrl=self.config.server_queue_url, ReceiptHandle=message["ReceiptHandle"]),
                     "deleting a message of the server's queue")
        return len(messages)

    def answer(self, round_key: dict, token: Optional[str], output: str) -> None:
        """Answers the step's task with its stored outcome and marks the round answered."""
        if token is None:
            return  # a later delivery answers from the stored outcome
        self._send(lambda: self.sfn.send_task_success(taskToken=token, output=output), "answering the step's task")
        self.store.transition(round_key, "answered", None, "yes")

    def fail(self, token: Optional[str], cause: str) -> None:
        """Fails the step's task with `cause` (the state machine's run fails with it)."""
        if token is not None:
            self._send(lambda: self.sfn.send_task_failure(taskToken=token, error="RoundFailed", cause=cause[:32000]),
                       "failing the step's task")

    def _send(self, call, what: str) -> None:
        """Sends an answer, retrying transient failures. A retried answer whose first attempt was
        applied finds the task over: Step Functions says `TaskTimedOut` (moto: `InvalidToken`)."""
        attempts = {"n": 0}

        def attempt():
            attempts["n"] += 1
            return call()

        try:
            retrying(attempt, what)
        except (self.sfn.exceptions.TaskTimedOut, self.sfn.exceptions.TaskDoesNotExist):
            pass  # already answered, or past its deadline: nothing more to say
        except self.sfn.exceptions.InvalidToken:
            if attempts["n"] == 1:
                raise  # a token that was never valid is a bug, not an answer already given
