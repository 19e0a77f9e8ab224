"""posmesh.staff.v1.StaffService on the wire: messages in, domain calls, messages out. Access,
tenant and error handling happen in the shared interceptor; the rules live in the domain."""

from __future__ import annotations

from datetime import datetime, timezone

import grpc

from posmesh.common import context
from posmesh.staff.v1 import staff_pb2, staff_pb2_grpc
from services.staff import wire
from services.staff.domain import StaffDomain
from services.staff.invitations import Invitations


def _now() -> datetime:
    return datetime.now(timezone.utc)


class StaffServicer(staff_pb2_grpc.StaffServiceServicer):
    def __init__(self, domain: StaffDomain, invitations: Invitations) -> None:
        self.domain = domain
        self.invitations = invitations

    async def CreateRestaurant(self, request: staff_pb2.CreateRestaurantRequest,
                               ctx: grpc.aio.ServicerContext) -> staff_pb2.Restaurant:
        created = await self.domain.create_restaurant(context.current(),
                                                      wire.restaurant_draft(request.restaurant))
        return wire.restaurant_message(created)

    async def ListRestaurants(self, request: staff_pb2.ListRestaurantsRequest,
                              ctx: grpc.aio.ServicerContext) -> staff_pb2.ListRestaurantsResponse:
        page = await self.domain.list_restaurants(context.current(), request.page_size,
                                                  request.page_token)
        return staff_pb2.ListRestaurantsResponse(
            restaurants=[wire.restaurant_message(item) for item in page.items],
            next_page_token=page.next_page_token)

    async def GetRestaurant(self, request: staff_pb2.GetRestaurantRequest,
                            ctx: grpc.aio.ServicerContext) -> staff_pb2.Restaurant:
        found = await self.domain.get_restaurant(context.current(), request.restaurant_id)
        return wire.restaurant_message(found)

    async def UpdateRestaurant(self, request: staff_pb2.UpdateRestaurantRequest,
                               ctx: grpc.aio.ServicerContext) -> staff_pb2.Restaurant:
        changes = wire.restaurant_changes(
            request.restaurant, request.update_mask if request.HasField("update_mask") else None)
        updated = await self.domain.update_restaurant(context.current(), request.restaurant_id,
                                                      changes, request.restaurant.version)
        return wire.restaurant_message(updated)

    async def ListEmployees(self, request: staff_pb2.ListEmployeesRequest,
                            ctx: grpc.aio.ServicerContext) -> staff_pb2.ListEmployeesResponse:
        page = await self.domain.list_employees(context.current(), request.page_size,
                                                request.page_token, request.access_role,
                                                request.state)
        return staff_pb2.ListEmployeesResponse(
            employees=[wire.employee_message(item) for item in page.items],
            next_page_token=page.next_page_token)

    async def CreateEmployee(self, request: staff_pb2.CreateEmployeeRequest,
                             ctx: grpc.aio.ServicerContext) -> staff_pb2.Employee:
        created = await self.domain.create_employee(context.current(),
                                                    wire.employee_draft(request.employee))
        return wire.employee_message(created)

    async def GetEmployee(self, request: staff_pb2.GetEmployeeRequest,
                          ctx: grpc.aio.ServicerContext) -> staff_pb2.Employee:
        return wire.employee_message(
            await self.domain.get_employee(context.current(), request.employee_id))

    async def UpdateEmployee(self, request: staff_pb2.UpdateEmployeeRequest,
                             ctx: grpc.aio.ServicerContext) -> staff_pb2.Employee:
        changes = wire.employee_changes(
            request.employee, request.update_mask if request.HasField("update_mask") else None)
        updated = await self.domain.update_employee(context.current(), request.employee_id, changes,
                                                    request.employee.version)
        return wire.employee_message(updated)

    async def DeleteEmployee(self, request: staff_pb2.DeleteEmployeeRequest,
                             ctx: grpc.aio.ServicerContext) -> staff_pb2.Employee:
        return wire.employee_message(await self.domain.deactivate_employee(
            context.current(), request.employee_id, request.version))

    async def UndeleteEmployee(self, request: staff_pb2.UndeleteEmployeeRequest,
                               ctx: grpc.aio.ServicerContext) -> staff_pb2.Employee:
        return wire.employee_message(await self.domain.reactivate_employee(
            context.current(), request.employee_id, request.version))

    async def ListInvitations(self, request: staff_pb2.ListInvitationsRequest,
                              ctx: grpc.aio.ServicerContext) -> staff_pb2.ListInvitationsResponse:
        page = await self.invitations.list(context.current(), request.page_size,
                                           request.page_token, request.state)
        now = _now()
        return staff_pb2.ListInvitationsResponse(
            invitations=[wire.invitation_message(item, now) for item in page.items],
            next_page_token=page.next_page_token)

    async def ResendInvitation(self, request: staff_pb2.ResendInvitationRequest,
                               ctx: grpc.aio.ServicerContext) -> staff_pb2.Invitation:
        invitation = await self.invitations.resend(context.current(), request.invitation_id)
        return wire.invitation_message(invitation, _now())

    async def RevokeInvitation(self, request: staff_pb2.RevokeInvitationRequest,
                               ctx: grpc.aio.ServicerContext) -> staff_pb2.Invitation:
        invitation = await self.invitations.revoke(context.current(), request.invitation_id)
        return wire.invitation_message(invitation, _now())

    async def ListMyInvitations(self, request: staff_pb2.ListMyInvitationsRequest,
                                ctx: grpc.aio.ServicerContext
                                ) -> staff_pb2.ListMyInvitationsResponse:
        items = await self.invitations.mine(context.current())
        now = _now()
        return staff_pb2.ListMyInvitationsResponse(
            invitations=[wire.invitation_message(item, now) for item in items])

    async def AcceptInvitation(self, request: staff_pb2.AcceptInvitationRequest,
                               ctx: grpc.aio.ServicerContext) -> staff_pb2.AcceptInvitationResponse:
        accepted = await self.invitations.accept(
            context.current_or_none(), token=request.token, invitation_id=request.invitation_id,
            password=request.password, full_name=request.full_name,
            client_ip=context.request_info().client_ip)
        return staff_pb2.AcceptInvitationResponse(
            invitation=wire.invitation_message(accepted.invitation, _now()),
            employee=wire.employee_message(accepted.employee), user_id=accepted.user_id,
            email=accepted.email)
