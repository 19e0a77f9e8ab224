"""The data a bench run works on: restaurants, their people's tokens, menu items and orders.
Plain, picklable dataclasses, so load-generator processes get a copy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Person:
    user_id: str
    email: str
    role: str
    access_token: str
    refresh_token: str


@dataclass
class Restaurant:
    id: str
    owner: Person
    manager: Person
    staff: list[Person]
    menu_item_ids: list[str]
    order_ids: list[str] = field(default_factory=list)

    @property
    def people(self) -> list[Person]:
        return [self.owner, self.manager, *self.staff]


@dataclass
class Target:
    """Where load goes: the edge (or the ceiling Envoy), over TLS trusting `ca_file`."""

    host: str
    port: int
    ca_file: str
    server_hostname: str = "localhost"


@dataclass
class World:
    restaurants: list[Restaurant]
    password: str

    def restaurant(self, index: int) -> Restaurant:
        return self.restaurants[index % len(self.restaurants)]
