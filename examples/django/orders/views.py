import os

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import taskmw
from orders.models import Event, Order
from orders.tasks import ship_order


class Rollback(Exception):
    pass


def _pool(request: HttpRequest) -> dict[str, object]:
    server = request.taskmw  # type: ignore[attr-defined] # set by TaskServerMiddleware
    environ = getattr(request, "environ", None) or {}
    scope = getattr(request, "scope", None) or {}
    via = "environ" if "taskmw.server" in environ else "scope" if "taskmw.server" in scope else "current_server"
    return {
        "pid": os.getpid(),
        "supervisor": server.supervisor_pid,
        "current_server_is_request_taskmw": taskmw.current_server() is server,
        "via": via,
        "request": type(request).__name__,
    }


def pool(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_pool(request))


async def pool_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_pool(request))


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """Save an order and queue its shipping inside one transaction: the task is
    queued when it commits. ``fail=1`` rolls it back after queuing: nothing runs."""
    ref = request.POST["ref"]
    try:
        with transaction.atomic():
            order = Order.objects.create(ref=ref, item=request.POST.get("item", "book"))
            ship_order.delay_on_commit(ref)
            if request.POST.get("fail"):
                raise Rollback
    except Rollback:
        return JsonResponse({"ref": ref, "rolled_back": True}, status=409)
    return JsonResponse({"ref": ref, "pk": order.pk, "pid": os.getpid()}, status=201)


def order_detail(request: HttpRequest, ref: str) -> JsonResponse:
    order = Order.objects.filter(ref=ref).first()
    events = list(Event.objects.filter(ref=ref).order_by("pk").values("kind", "pid"))
    return JsonResponse(
        {
            "ref": ref,
            "exists": order is not None,
            "status": order.status if order else None,
            "shipped_by": order.shipped_by if order else None,
            "events": events,
        }
    )
