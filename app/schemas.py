"""The JSON API's request and response bodies."""

from pydantic import BaseModel, ConfigDict, Field, StrictInt

USERNAME_PATTERN = r"^[a-z0-9_.-]{3,32}$"
SKU_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME_PATTERN, description="3-32 of a-z 0-9 _ . -")
    password: str = Field(min_length=8, max_length=128)


class UserOut(BaseModel):
    username: str


class Me(BaseModel):
    username: str
    served_by: str
    session_created_on: str
    session_created_at: str = Field(description="ISO 8601, UTC")
    requests_in_session: int | None = Field(
        description="Requests this session has made, this one included: exact (counted in Redis by every "
                    "instance) when the near cache is off (SESSION_NEAR_CACHE_S=0); null when it is on, since "
                    "instances then count on their own and write behind once a second, and a number read "
                    "through round-robin would step backwards")


class CartItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(pattern=SKU_PATTERN)
    qty: StrictInt = Field(ge=1, le=100, description="An integer: \"5\", 5.0 and true are refused")


class Cart(BaseModel):
    items: dict[str, int]


class Health(BaseModel):
    status: str
    instance: str


class Detail(BaseModel):
    detail: str


class InstanceOut(BaseModel):
    name: str
    up: bool = Field(description="Heartbeat seen in the last few seconds")
    requests: int = Field(description="Requests served, flushed to Redis about once a second")


class FarmOut(BaseModel):
    served_by: str
    session_backend: str
    live_sessions: int
    instances: list[InstanceOut]


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=128)
    new_password: str = Field(min_length=8, max_length=128)
