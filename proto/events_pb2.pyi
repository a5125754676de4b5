from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    IMPRESSION: _ClassVar[EventType]
    VIEW: _ClassVar[EventType]
    CLICK: _ClassVar[EventType]
    ADD_TO_CART: _ClassVar[EventType]
    PURCHASE: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
IMPRESSION: EventType
VIEW: EventType
CLICK: EventType
ADD_TO_CART: EventType
PURCHASE: EventType

class Context(_message.Message):
    __slots__ = ("device", "surface", "country")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    device: str
    surface: str
    country: str
    def __init__(self, device: _Optional[str] = ..., surface: _Optional[str] = ..., country: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "event_time_ms", "user_id", "type", "item_id", "request_id", "position", "price", "quantity", "context")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_time_ms: int
    user_id: str
    type: EventType
    item_id: str
    request_id: str
    position: int
    price: float
    quantity: int
    context: Context
    def __init__(self, event_id: _Optional[str] = ..., event_time_ms: _Optional[int] = ..., user_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., item_id: _Optional[str] = ..., request_id: _Optional[str] = ..., position: _Optional[int] = ..., price: _Optional[float] = ..., quantity: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class ItemUpsert(_message.Message):
    __slots__ = ("item_id", "title", "category", "brand", "price", "rating", "active", "updated_ms")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    category: str
    brand: str
    price: float
    rating: float
    active: bool
    updated_ms: int
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., category: _Optional[str] = ..., brand: _Optional[str] = ..., price: _Optional[float] = ..., rating: _Optional[float] = ..., active: _Optional[bool] = ..., updated_ms: _Optional[int] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("user_id", "country", "age_bucket", "signup_ms", "updated_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    AGE_BUCKET_FIELD_NUMBER: _ClassVar[int]
    SIGNUP_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    country: str
    age_bucket: str
    signup_ms: int
    updated_ms: int
    def __init__(self, user_id: _Optional[str] = ..., country: _Optional[str] = ..., age_bucket: _Optional[str] = ..., signup_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ...) -> None: ...

class ServedItem(_message.Message):
    __slots__ = ("item_id", "position", "score", "p_click", "p_cart", "p_purchase", "sources", "propensity", "features")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    P_CLICK_FIELD_NUMBER: _ClassVar[int]
    P_CART_FIELD_NUMBER: _ClassVar[int]
    P_PURCHASE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    position: int
    score: float
    p_click: float
    p_cart: float
    p_purchase: float
    sources: _containers.RepeatedScalarFieldContainer[str]
    propensity: float
    features: bytes
    def __init__(self, item_id: _Optional[str] = ..., position: _Optional[int] = ..., score: _Optional[float] = ..., p_click: _Optional[float] = ..., p_cart: _Optional[float] = ..., p_purchase: _Optional[float] = ..., sources: _Optional[_Iterable[str]] = ..., propensity: _Optional[float] = ..., features: _Optional[bytes] = ...) -> None: ...

class Impression(_message.Message):
    __slots__ = ("request_id", "user_id", "event_time_ms", "surface", "experiment", "arm", "model_version", "degraded", "degraded_reason", "items", "context")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    event_time_ms: int
    surface: str
    experiment: str
    arm: str
    model_version: str
    degraded: bool
    degraded_reason: str
    items: _containers.RepeatedCompositeFieldContainer[ServedItem]
    context: Context
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., event_time_ms: _Optional[int] = ..., surface: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ServedItem, _Mapping]]] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("source_topic", "partition", "offset", "reason", "original", "failed_at_ms", "stage")
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    source_topic: str
    partition: int
    offset: int
    reason: str
    original: bytes
    failed_at_ms: int
    stage: str
    def __init__(self, source_topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., reason: _Optional[str] = ..., original: _Optional[bytes] = ..., failed_at_ms: _Optional[int] = ..., stage: _Optional[str] = ...) -> None: ...

class TrainingExample(_message.Message):
    __slots__ = ("example_id", "request_id", "user_id", "item_id", "impression_time_ms", "position", "features", "propensity", "arm", "model_version", "served_p_click", "served_p_cart", "served_p_purchase", "click", "add_to_cart", "purchase", "click_delay_ms", "purchase_delay_ms", "version", "correction", "emitted_at_ms", "elapsed_ms", "final", "degraded", "sources")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVED_P_CLICK_FIELD_NUMBER: _ClassVar[int]
    SERVED_P_CART_FIELD_NUMBER: _ClassVar[int]
    SERVED_P_PURCHASE_FIELD_NUMBER: _ClassVar[int]
    CLICK_FIELD_NUMBER: _ClassVar[int]
    ADD_TO_CART_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_FIELD_NUMBER: _ClassVar[int]
    CLICK_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    EMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    request_id: str
    user_id: str
    item_id: str
    impression_time_ms: int
    position: int
    features: bytes
    propensity: float
    arm: str
    model_version: str
    served_p_click: float
    served_p_cart: float
    served_p_purchase: float
    click: bool
    add_to_cart: bool
    purchase: bool
    click_delay_ms: int
    purchase_delay_ms: int
    version: int
    correction: bool
    emitted_at_ms: int
    elapsed_ms: int
    final: bool
    degraded: bool
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, example_id: _Optional[str] = ..., request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., impression_time_ms: _Optional[int] = ..., position: _Optional[int] = ..., features: _Optional[bytes] = ..., propensity: _Optional[float] = ..., arm: _Optional[str] = ..., model_version: _Optional[str] = ..., served_p_click: _Optional[float] = ..., served_p_cart: _Optional[float] = ..., served_p_purchase: _Optional[float] = ..., click: _Optional[bool] = ..., add_to_cart: _Optional[bool] = ..., purchase: _Optional[bool] = ..., click_delay_ms: _Optional[int] = ..., purchase_delay_ms: _Optional[int] = ..., version: _Optional[int] = ..., correction: _Optional[bool] = ..., emitted_at_ms: _Optional[int] = ..., elapsed_ms: _Optional[int] = ..., final: _Optional[bool] = ..., degraded: _Optional[bool] = ..., sources: _Optional[_Iterable[str]] = ...) -> None: ...
