"""Every URL of the API's address, in one table: the API's operations, with what OpenAPI
says of each (service/http/openapi.py builds the document from this table), then the
operations endpoints. GET /metrics is not here: it has a listener of its own
(service/http/metrics.py, WALLET_METRICS_LISTEN)."""

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from service.domain import refusals
from service.domain.refusals import Refusal
from service.http import (
    api_docs,
    auth,
    batches,
    docs,
    holds,
    ops,
    refunds,
    schemas,
    statements,
    wallet,
)
from service.http.errors import Handler


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    handler: Handler
    summary: str
    status: int
    response: type[BaseModel] | None
    # What this operation may answer besides success; the ones every JSON body, every
    # session check and every backend outage may give are added by ``refusals_of``.
    refusals: tuple[Refusal, ...] = ()
    body: type[BaseModel] | None = None
    # OpenAPI parameters besides Idempotency-Key: the path's and the query's.
    parameters: tuple[dict[str, Any], ...] = ()
    # Also answers text/csv (with ?format=csv).
    csv: bool = False
    authenticated: bool = True
    idempotent: bool = False
    # OpenAPI links of the success response: what a client can do next with its data.
    links: dict[str, Any] = field(default_factory=dict)


def refusals_of(op: Operation) -> tuple[Refusal, ...]:
    body = (
        (
            refusals.MALFORMED_JSON,
            refusals.REQUEST_TIMEOUT,
            refusals.PAYLOAD_TOO_LARGE,
            refusals.UNSUPPORTED_MEDIA_TYPE,
            refusals.VALIDATION_ERROR,
        )
        if op.body is not None
        else ()
    )
    session = (refusals.UNAUTHORIZED,) if op.authenticated else ()
    return (
        *body,
        *session,
        *op.refusals,
        refusals.SERVICE_UNAVAILABLE,
        refusals.TOO_MANY_CONNECTIONS,
    )


# Every money request has its Idempotency-Key header and its (empty) query string checked,
# body or not (money_calls.money_caller); every money script may find Redis lost its data
# (`wallet rebuild`); every money request may lose its reply from Redis, and then its outcome
# may be unknown (when it is known not applied, it is a service_unavailable like any outage).
_MONEY = (
    refusals.VALIDATION_ERROR,
    refusals.IDEMPOTENCY_KEY_REUSED,
    refusals.ACCOUNT_NOT_FOUND,
    refusals.OUTCOME_UNKNOWN,
)
_LISTING = (refusals.VALIDATION_ERROR, refusals.HISTORY_UNAVAILABLE)

OPERATIONS = (
    Operation("signUp", "POST", "/api/sign-up/", auth.sign_up,
              "Create a user with a zero balance", 201, schemas.UserOut,
              (refusals.WEAK_PASSWORD, refusals.USERNAME_TAKEN, refusals.TOO_MANY_SIGN_UPS,
               refusals.SERVER_BUSY),
              body=schemas.SignUpRequest, authenticated=False, links=docs.SIGN_UP_LINKS),
    Operation("logIn", "POST", "/api/login/", auth.login,
              "Log in; sets the session cookie", 200, schemas.UserOut,
              (refusals.INVALID_CREDENTIALS, refusals.TOO_MANY_ATTEMPTS, refusals.SERVER_BUSY),
              body=schemas.Credentials, authenticated=False),
    Operation("logOut", "POST", "/api/logout/", auth.logout, "Revoke the session", 204, None),
    Operation("logOutEverywhere", "POST", "/api/logout/all/", auth.logout_all,
              "End every session of the user, this one included", 204, None),
    Operation("changePassword", "POST", "/api/password/", auth.change_password,
              "Change the password; every other session ends, this one gets a new id", 204,
              None, (refusals.INVALID_CREDENTIALS, refusals.WEAK_PASSWORD,
                     refusals.TOO_MANY_ATTEMPTS, refusals.SERVER_BUSY),
              body=schemas.PasswordChange),
    Operation("getBalance", "GET", "/api/balance/", wallet.get_balance,
              "The balance in kopecks and rubles, with what pending holds keep; with `at`,"
              " the posted balance at that instant", 200, schemas.BalanceAnswer,
              (refusals.VALIDATION_ERROR, refusals.ACCOUNT_NOT_FOUND,
               refusals.HISTORY_UNAVAILABLE),
              parameters=(docs.AT,)),
    Operation("deposit", "POST", "/api/balance/deposit/", wallet.deposit,
              "Deposit to one's own balance", 201, schemas.TransactionOut,
              (*_MONEY, refusals.BALANCE_LIMIT_EXCEEDED), body=schemas.DepositRequest,
              idempotent=True, links=docs.DEPOSIT_LINKS),
    Operation("listDeposits", "GET", "/api/balance/deposit/", wallet.deposit_history,
              "Deposit history, newest first", 200, schemas.DepositPage, _LISTING,
              parameters=(docs.LIMIT, docs.CURSOR)),
    Operation("transfer", "POST", "/api/balance/transfer/", wallet.transfer,
              "Transfer to another user", 201, schemas.TransactionOut,
              (*_MONEY, refusals.RECIPIENT_NOT_FOUND, refusals.INSUFFICIENT_FUNDS,
               refusals.SELF_TRANSFER, refusals.BALANCE_LIMIT_EXCEEDED,
               refusals.TOO_MANY_UNKNOWN_RECIPIENTS),
              body=schemas.TransferRequest, idempotent=True, links=docs.TRANSFER_LINKS),
    Operation("listTransfers", "GET", "/api/balance/transfer/", wallet.transfer_history,
              "Transfer history, newest first", 200, schemas.TransferPage, _LISTING,
              parameters=(docs.DIRECTION, docs.LIMIT, docs.CURSOR)),
    Operation("transferBatch", "POST", "/api/balance/transfer/batch/", batches.transfer_batch,
              "Transfer to 1-100 recipients, all or nothing", 201, schemas.BatchOut,
              (*_MONEY, refusals.RECIPIENT_NOT_FOUND, refusals.INSUFFICIENT_FUNDS,
               refusals.SELF_TRANSFER, refusals.BALANCE_LIMIT_EXCEEDED,
               refusals.TOO_MANY_UNKNOWN_RECIPIENTS),
              body=schemas.BatchRequest, idempotent=True),
    Operation("refundTransfer", "POST", "/api/balance/transfer/{id}/refund/", refunds.refund,
              "Refund, as its recipient, all or part of a transfer", 201, schemas.TransactionOut,
              (*_MONEY, refusals.TRANSACTION_NOT_FOUND, refusals.INSUFFICIENT_FUNDS,
               refusals.REFUND_EXCEEDS_TRANSFER, refusals.BALANCE_LIMIT_EXCEEDED,
               refusals.HISTORY_UNAVAILABLE),
              body=schemas.RefundRequest, parameters=(docs.TRANSACTION_ID,), idempotent=True),
    Operation("getStatement", "GET", "/api/balance/statement/", statements.statement,
              "A statement for [from, to): opening and closing balance, every transaction"
              " with the balance after it", 200, schemas.StatementOut,
              (*_LISTING, refusals.STATEMENT_TOO_LARGE),
              parameters=(docs.FROM, docs.TO, docs.FORMAT), csv=True),
    Operation("createHold", "POST", "/api/holds/", holds.create_hold,
              "Reserve money for a payee, who captures or voids it before it expires", 201,
              schemas.HoldOut,
              (*_MONEY, refusals.RECIPIENT_NOT_FOUND, refusals.INSUFFICIENT_FUNDS,
               refusals.SELF_TRANSFER, refusals.BALANCE_LIMIT_EXCEEDED, refusals.TOO_MANY_HOLDS,
               refusals.TOO_MANY_UNKNOWN_RECIPIENTS),
              body=schemas.HoldRequest, idempotent=True, links=docs.HOLD_LINKS),
    Operation("listHolds", "GET", "/api/holds/", holds.list_my_holds,
              "Holds as payer or payee, newest first", 200, schemas.HoldPage, _LISTING,
              parameters=(docs.HOLD_STATUS, docs.HOLD_ROLE, docs.LIMIT, docs.CURSOR)),
    Operation("getHold", "GET", "/api/holds/{id}/", holds.get_hold,
              "One hold, to its payer or payee", 200, schemas.HoldOut,
              (refusals.VALIDATION_ERROR, refusals.HOLD_NOT_FOUND, refusals.HISTORY_UNAVAILABLE),
              parameters=(docs.HOLD_ID,)),
    Operation("captureHold", "POST", "/api/holds/{id}/capture/", holds.capture_hold,
              "Capture all or part of a pending hold, as its payee", 201, schemas.TransactionOut,
              (*_MONEY, refusals.HOLD_NOT_FOUND, refusals.HOLD_NOT_PENDING,
               refusals.CAPTURE_EXCEEDS_HOLD, refusals.HISTORY_UNAVAILABLE),
              body=schemas.CaptureRequest, parameters=(docs.HOLD_ID,), idempotent=True),
    Operation("voidHold", "POST", "/api/holds/{id}/void/", holds.void_hold,
              "Void a pending hold, as its payee: the money is the payer's again", 200,
              schemas.HoldOut,
              (*_MONEY, refusals.HOLD_NOT_FOUND, refusals.HOLD_NOT_PENDING,
               refusals.HISTORY_UNAVAILABLE),
              parameters=(docs.HOLD_ID,), idempotent=True),
)  # fmt: skip

# Not part of the API document: probes, the document itself and the page that shows it.
_OPERATIONS_ENDPOINTS = (
    ("GET", "/healthz", ops.healthz),
    ("GET", "/readyz", ops.readyz),
    ("GET", "/api/openapi.json", ops.openapi_json),
    ("GET", "/api/docs", api_docs.docs_page),
    ("GET", api_docs.ASSETS_PATH + "{name}", api_docs.docs_asset),
)


def setup_routes(app: web.Application) -> None:
    for op in OPERATIONS:
        app.router.add_route(op.method, op.path, op.handler)
    for method, path, handler in _OPERATIONS_ENDPOINTS:
        app.router.add_route(method, path, handler)
