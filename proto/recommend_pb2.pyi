from proto import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "surface", "context", "k", "request_id", "exclude_item_ids", "explain")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    surface: str
    context: _events_pb2.Context
    k: int
    request_id: str
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    explain: bool
    def __init__(self, user_id: _Optional[str] = ..., surface: _Optional[str] = ..., context: _Optional[_Union[_events_pb2.Context, _Mapping]] = ..., k: _Optional[int] = ..., request_id: _Optional[str] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., explain: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "sources", "model_rank")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    MODEL_RANK_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    sources: _containers.RepeatedScalarFieldContainer[str]
    model_rank: int
    def __init__(self, item_id: _Optional[str] = ..., sources: _Optional[_Iterable[str]] = ..., model_rank: _Optional[int] = ...) -> None: ...

class HeadProbabilities(_message.Message):
    __slots__ = ("p_click", "p_cart", "p_purchase")
    P_CLICK_FIELD_NUMBER: _ClassVar[int]
    P_CART_FIELD_NUMBER: _ClassVar[int]
    P_PURCHASE_FIELD_NUMBER: _ClassVar[int]
    p_click: float
    p_cart: float
    p_purchase: float
    def __init__(self, p_click: _Optional[float] = ..., p_cart: _Optional[float] = ..., p_purchase: _Optional[float] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "probs", "sources", "position", "propensity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    probs: HeadProbabilities
    sources: _containers.RepeatedScalarFieldContainer[str]
    position: int
    propensity: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., probs: _Optional[_Union[HeadProbabilities, _Mapping]] = ..., sources: _Optional[_Iterable[str]] = ..., position: _Optional[int] = ..., propensity: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("request_id", "items", "model_version", "experiment", "arm", "degraded", "degraded_reason", "served_at_ms", "served_by", "candidates")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    experiment: str
    arm: str
    degraded: bool
    degraded_reason: str
    served_at_ms: int
    served_by: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., served_at_ms: _Optional[int] = ..., served_by: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class EchoReply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...
