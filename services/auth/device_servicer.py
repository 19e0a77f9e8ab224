"""gRPC <-> domain for DeviceService (services/auth/devices.py). Nothing else lives here."""

from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf import timestamp_pb2

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from posmesh.common import context
from services.auth.device_store import DeviceRecord
from services.auth.devices import Devices, StaffSignIn
from services.auth.servicer import _context_user


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _device(device: DeviceRecord) -> auth_pb2.Device:
    message = auth_pb2.Device(id=device.id, name=device.name,
                              device_type=auth_pb2.DeviceType.Value(device.device_type),
                              restaurant_id=device.restaurant_id,
                              create_time=_timestamp(device.created_at),
                              last_used_time=_timestamp(device.last_used_at))
    if device.revoked_at is not None:
        message.revoke_time.CopyFrom(_timestamp(device.revoked_at))
    return message


def _device_type_name(value: int) -> str:
    return auth_pb2.DeviceType.Name(value) if value in auth_pb2.DeviceType.values() else ""


def _staff_session(signed_in: StaffSignIn) -> auth_pb2.StaffSession:
    return auth_pb2.StaffSession(
        access_token=signed_in.access_token, refresh_token=signed_in.refresh_token,
        token_type="Bearer", expires_in=signed_in.expires_in,
        user=_context_user(signed_in.user), device_id=signed_in.device_id,
        idle_lock_seconds=signed_in.idle_lock_seconds, session_id=signed_in.session_id)


class DeviceServicer(auth_pb2_grpc.DeviceServiceServicer):
    def __init__(self, devices: Devices) -> None:
        self._devices = devices

    async def CreatePairingCode(self, request, ctx) -> auth_pb2.PairingCode:
        caller = context.current()
        issued, device_type, name = await self._devices.create_pairing_code(
            caller, device_type=_device_type_name(request.device_type), name=request.name)
        return auth_pb2.PairingCode(code=issued.code,
                                    device_type=auth_pb2.DeviceType.Value(device_type), name=name,
                                    expire_time=_timestamp(issued.expires_at),
                                    restaurant_id=caller.restaurant_id)

    async def PairDevice(self, request, ctx) -> auth_pb2.DeviceCredential:
        info = context.request_info()
        credential = await self._devices.pair(code=request.code,
                                              restaurant_id=request.restaurant_id,
                                              client_ip=info.client_ip, user_agent=info.user_agent)
        return auth_pb2.DeviceCredential(
            device=_device(credential.device), access_token=credential.access_token,
            refresh_token=credential.refresh_token, token_type="Bearer",
            expires_in=credential.expires_in, refresh_expires_in=credential.refresh_expires_in)

    async def ListDevices(self, request, ctx) -> auth_pb2.ListDevicesResponse:
        devices = await self._devices.list(context.current())
        return auth_pb2.ListDevicesResponse(devices=[_device(device) for device in devices])

    async def UpdateDevice(self, request, ctx) -> auth_pb2.Device:
        return _device(await self._devices.rename(context.current(), device_id=request.device_id,
                                                  name=request.name))

    async def DeleteDevice(self, request, ctx) -> auth_pb2.Device:
        return _device(await self._devices.revoke(context.current(), device_id=request.device_id))

    async def GetDevicePolicy(self, request, ctx) -> auth_pb2.DevicePolicy:
        caller = context.current()
        seconds = await self._devices.idle_lock_seconds(caller.restaurant_id)
        return auth_pb2.DevicePolicy(restaurant_id=caller.restaurant_id,
                                     staff_idle_lock_seconds=seconds)

    async def UpdateDevicePolicy(self, request, ctx) -> auth_pb2.DevicePolicy:
        caller = context.current()
        seconds = await self._devices.set_idle_lock_seconds(caller,
                                                            request.staff_idle_lock_seconds)
        return auth_pb2.DevicePolicy(restaurant_id=caller.restaurant_id,
                                     staff_idle_lock_seconds=seconds)

    async def SetPin(self, request, ctx) -> auth_pb2.SetPinResponse:
        await self._devices.set_own_pin(context.current(), request.pin)
        return auth_pb2.SetPinResponse()

    async def ResetPin(self, request, ctx) -> auth_pb2.PinSetupCode:
        issued = await self._devices.reset_pin(context.current(), request.user_id)
        return auth_pb2.PinSetupCode(user_id=request.user_id.strip().lower(), code=issued.code,
                                     expire_time=_timestamp(issued.expires_at))

    async def ListPinUsers(self, request, ctx) -> auth_pb2.ListPinUsersResponse:
        holders = await self._devices.pin_users(context.current())
        return auth_pb2.ListPinUsersResponse(users=[
            auth_pb2.PinUser(user_id=holder.user_id, full_name=holder.full_name, role=holder.role,
                             has_pin=holder.pin_hash is not None) for holder in holders])

    async def PinLogin(self, request, ctx) -> auth_pb2.StaffSession:
        return _staff_session(await self._devices.pin_login(
            context.current(), user_id=request.user_id, pin=request.pin))

    async def SetupPin(self, request, ctx) -> auth_pb2.StaffSession:
        return _staff_session(await self._devices.setup_pin(
            context.current(), user_id=request.user_id, setup_code=request.setup_code,
            new_pin=request.new_pin))

    async def ApproveAction(self, request, ctx) -> auth_pb2.Approval:
        approval = await self._devices.approve(
            context.current(), action=request.action, resource_id=request.resource_id,
            approver_user_id=request.approver_user_id, approver_pin=request.approver_pin)
        return auth_pb2.Approval(
            approval=approval.token, action=approval.action, resource_id=approval.resource_id,
            approver_user_id=approval.approver,
            expire_time=_timestamp(datetime.fromtimestamp(approval.expires_at, timezone.utc)))
