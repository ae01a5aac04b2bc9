"""FailingScheduler: an EmbeddedScheduler that misbehaves on purpose, in the ways networks and servers do."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any

import grpc

from hodei.domain import WorkerRecord
from hodei.errors import ErrorCode, SchedulerError, scheduler_error_for
from hodei.observability._metrics import SchedulerMetrics
from hodei.ports import RegistryStore
from hodei.security._config import SchedulerSecurity
from hodei.server._bounds import RegistrationBound
from hodei.server._interception import REGISTRATION_METHODS, Behaviour, MethodInterceptor, with_behaviour
from hodei.testing._embedded import EmbeddedScheduler
from hodei.transport._status import abort_with

__all__ = ["REGISTRATION_METHODS", "FailingScheduler"]


class _FaultInterceptor(MethodInterceptor):
    per_call = True  # each call is counted, and failed or served, on its own

    def __init__(self, scheduler: FailingScheduler, methods: Collection[str]) -> None:
        super().__init__(methods)
        self._scheduler = scheduler

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return self._scheduler._wrap(handler)


class FailingScheduler(EmbeddedScheduler):
    """``FailingScheduler(2)`` fails the first two registration calls with ``UNAVAILABLE``, then behaves.

    Options (all switchable later through the methods of the same names):

    - ``code``: the status code of the injected failures;
    - ``retry_after``: seconds of ``google.rpc.RetryInfo`` advice sent with each injected failure;
    - ``hang``: injected failures never answer (the caller's deadline ends them) instead of failing;
    - ``lose_answers``: injected failures do the work first, then fail: the registration is written but the
      caller hears the error, as when an answer is lost on its way back;
    - ``delay``: every call that is not failed is served after this many seconds;
    - ``refuse``: worker ids refused, each with its code, on every call (per worker inside a batch);
    - ``methods``: which RPCs misbehave (default: the two registration calls);
    - ``store`` and ``security``: as :class:`EmbeddedScheduler`'s.

    ``calls`` counts the calls to those methods, ``failed_calls`` the ones that were failed or hung.
    """

    def __init__(
        self,
        failures: int = 1,
        *,
        code: ErrorCode = ErrorCode.UNAVAILABLE,
        hang: bool = False,
        lose_answers: bool = False,
        delay: float = 0.0,
        retry_after: float | None = None,
        refuse: Mapping[str, ErrorCode] | None = None,
        methods: Collection[str] = REGISTRATION_METHODS,
        message: str = "injected failure",
        registration_bound: RegistrationBound | None = None,
        metrics: SchedulerMetrics | None = None,
        store: RegistryStore | None = None,
        security: SchedulerSecurity | None = None,
    ) -> None:
        super().__init__(
            veto=self._veto,
            interceptors=[_FaultInterceptor(self, methods)],
            registration_bound=registration_bound,
            metrics=metrics,
            store=store,
            security=security,
        )
        self.methods = frozenset(methods)
        self.failures_left = failures
        self.code = code
        self.hang = hang
        self.lose_answers = lose_answers
        self.delay = delay
        self.retry_after = retry_after
        self.refused: dict[str, ErrorCode] = dict(refuse or {})
        self.message = message
        self.calls = 0
        self.failed_calls = 0

    def fail_next(self, count: int, *, code: ErrorCode | None = None, hang: bool = False) -> None:
        """Fail (or hang) the next ``count`` calls."""
        self.failures_left = count
        self.hang = hang
        if code is not None:
            self.code = code

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def refuse(self, worker_id: str, code: ErrorCode = ErrorCode.PERMISSION_DENIED) -> None:
        self.refused[worker_id] = code

    def _veto(self, worker: WorkerRecord) -> SchedulerError | None:
        code = self.refused.get(worker.worker_id)
        if code is None:
            return None
        return scheduler_error_for(code, f"worker {worker.worker_id!r} refused by FailingScheduler")

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.calls += 1
        behaviour: Behaviour
        if self.failures_left > 0:
            self.failures_left -= 1
            self.failed_calls += 1
            if self.hang:
                behaviour = self._hang_forever
            elif self.lose_answers:
                behaviour = self._served_then_failed(handler.unary_unary)
            else:
                behaviour = self._fail
        elif self.delay > 0:
            behaviour = self._delayed(handler.unary_unary, self.delay)
        else:
            return handler
        return with_behaviour(handler, behaviour)

    async def _fail(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with(context, scheduler_error_for(self.code, self.message, retry_after=self.retry_after))

    def _served_then_failed(self, serve: Behaviour) -> Behaviour:
        async def served_then_failed(request: Any, context: Any) -> Any:
            await serve(request, context)
            await self._fail(request, context)

        return served_then_failed

    @staticmethod
    async def _hang_forever(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await asyncio.Event().wait()

    @staticmethod
    def _delayed(serve: Behaviour, seconds: float) -> Behaviour:
        async def delayed(request: Any, context: Any) -> Any:
            await asyncio.sleep(seconds)
            return await serve(request, context)

        return delayed
