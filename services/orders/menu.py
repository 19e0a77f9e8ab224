"""Menu use cases. Each change is written with a `menu.updated` event in the same transaction, so
screens following the restaurant's stream reload their menu."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from posmesh.common.errors import NotFound, Unavailable, version_conflict
from services.orders.domain import (
    MENU_UPDATED,
    Actor,
    CategoryPatch,
    EventDraft,
    MenuCategory,
    MenuItem,
    MenuItemPatch,
    menu_category_not_found,
    menu_item_not_found,
    new_menu_item,
    patched_category,
    patched_menu_item,
)
from services.orders.order_book import utc_now
from services.orders.restaurants import RestaurantDirectory
from services.orders.store import OrdersStore, Transaction


@dataclass(frozen=True, slots=True)
class MenuView:
    categories: list[MenuCategory]
    items: list[MenuItem]
    currency: str


class MenuBook:
    def __init__(self, store: OrdersStore, restaurants: RestaurantDirectory,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._restaurants = restaurants
        self._clock = clock

    async def get(self, actor: Actor, bearer_token: str, include_unavailable: bool) -> MenuView:
        categories, items = await self._store.menu(actor.restaurant_id, include_unavailable)
        try:
            currency = (await self._restaurants.profile(actor.restaurant_id, bearer_token)).currency
        except (Unavailable, NotFound):
            # Reading the menu must not depend on the staff service: the items carry their price's
            # currency, so the menu is still correct without the top-level field.
            currency = items[0].currency if items else ""
        return MenuView(categories, items, currency)

    # -- categories ----------------------------------------------------------------------------

    async def create_category(self, actor: Actor, name: str, position: int) -> MenuCategory:
        category = MenuCategory(id=str(uuid.uuid4()), restaurant_id=actor.restaurant_id, name=name,
                                position=position, version=1)
        async with self._store.transaction("create_menu_category") as tx:
            await tx.insert_category(category, self._clock())
            await self._event(tx, actor, "category.created", category=category)
        return category

    async def update_category(self, actor: Actor, category_id: str, patch: CategoryPatch,
                              expected_version: int) -> MenuCategory:
        async with self._store.transaction("update_menu_category") as tx:
            current = await tx.lock_category(actor.restaurant_id, category_id)
            if current is None:
                raise menu_category_not_found(category_id)
            if current.version != expected_version:
                raise version_conflict(f"menu category {category_id}", expected_version,
                                       current.version)
            updated = patched_category(current, patch)
            await tx.save_category(updated, self._clock())
            await self._event(tx, actor, "category.updated", category=updated)
        return updated

    async def delete_category(self, actor: Actor, category_id: str) -> None:
        async with self._store.transaction("delete_menu_category") as tx:
            current = await tx.lock_category(actor.restaurant_id, category_id)
            if current is None:
                raise menu_category_not_found(category_id)
            await tx.delete_category(actor.restaurant_id, category_id, self._clock())
            await self._event(tx, actor, "category.deleted", category=current)

    # -- items ---------------------------------------------------------------------------------

    async def create_item(self, actor: Actor, bearer_token: str, patch: MenuItemPatch) -> MenuItem:
        profile = await self._restaurants.profile(actor.restaurant_id, bearer_token)
        item = new_menu_item(item_id=str(uuid.uuid4()), restaurant_id=actor.restaurant_id,
                             currency=profile.currency, patch=patch)
        async with self._store.transaction("create_menu_item") as tx:
            await self._check_category(tx, actor, item.category_id)
            await tx.insert_menu_item(item, self._clock())
            await self._event(tx, actor, "item.created", item=item)
        return item

    async def update_item(self, actor: Actor, bearer_token: str, item_id: str,
                          patch: MenuItemPatch, expected_version: int) -> MenuItem:
        profile = await self._restaurants.profile(actor.restaurant_id, bearer_token)
        async with self._store.transaction("update_menu_item") as tx:
            current = await tx.lock_menu_item(actor.restaurant_id, item_id)
            if current is None:
                raise menu_item_not_found(item_id)
            if current.version != expected_version:
                raise version_conflict(f"menu item {item_id}", expected_version, current.version)
            updated = patched_menu_item(current, patch, profile.currency)
            if updated.category_id != current.category_id:
                await self._check_category(tx, actor, updated.category_id)
            await tx.save_menu_item(updated, self._clock())
            await self._event(tx, actor, "item.updated", item=updated)
        return updated

    async def delete_item(self, actor: Actor, item_id: str) -> None:
        async with self._store.transaction("delete_menu_item") as tx:
            current = await tx.lock_menu_item(actor.restaurant_id, item_id)
            if current is None:
                raise menu_item_not_found(item_id)
            await tx.delete_menu_item(actor.restaurant_id, item_id, self._clock())
            await self._event(tx, actor, "item.deleted", item=current)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    async def _check_category(tx: Transaction, actor: Actor, category_id: str | None) -> None:
        if category_id is not None and not await tx.category_in_restaurant(actor.restaurant_id,
                                                                           category_id):
            raise menu_category_not_found(category_id)

    @staticmethod
    async def _event(tx: Transaction, actor: Actor, change: str, *, item: MenuItem | None = None,
                     category: MenuCategory | None = None) -> None:
        await tx.append_event(actor.restaurant_id, EventDraft(
            MENU_UPDATED, menu_change=change, menu_item=item, menu_category=category))

