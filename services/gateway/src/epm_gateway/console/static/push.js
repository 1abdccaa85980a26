// Web push: this device subscribes with the deployment's VAPID key and is added as a push
// channel (the chosen customer's, or MSP-wide); sw.js shows what arrives.
import { api } from "./api.js";
import { $ } from "./dom.js";

export function pushView(ctx) {
  const status = (text) => ($("#push-status").textContent = text);

  async function enable() {
    if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
      status("This browser cannot receive push notifications (on iPhone: add the console to the home screen first).");
      return;
    }
    if ((await Notification.requestPermission()) !== "granted") {
      status("Notifications are blocked for this site: allow them in the browser's settings.");
      return;
    }
    const registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    const { public_key: key } = await api("GET", "/v1/notification-channels/vapid-public-key");
    const subscription = await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: base64url(key),
    });
    const json = subscription.toJSON();
    const body = { kind: "push", subscription: { endpoint: json.endpoint, keys: json.keys } };
    const path = ctx.tenant
      ? `/v1/tenants/${encodeURIComponent(ctx.tenant)}/notification-channels`
      : "/v1/notification-channels";
    await api("POST", path, body);
    status(`This device is notified of new requests${ctx.tenant ? ` of ${ctx.tenant}` : ""}.`);
  }

  $("#push-enable").addEventListener("click", () =>
    enable().catch((err) => status(`Could not turn on notifications: ${err.message}`)),
  );
  return { show: () => {}, tenantChanged: () => status("") };
}

function base64url(text) {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}
