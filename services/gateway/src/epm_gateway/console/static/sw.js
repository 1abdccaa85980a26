// The console's service worker: shows web push notifications and opens the console on a tap.
self.addEventListener("push", (event) => {
  let payload = {};
  try {
    payload = event.data ? event.data.json() : {};
  } catch {
    payload = { summary: event.data ? event.data.text() : "" };
  }
  const type = String(payload.type || "").split(".")[1] || "EPM";
  const title = type === "RequestCreated" ? "Elevation request" : `EPM: ${type}`;
  const body = payload.summary || (payload.data && payload.data.user ? `${payload.data.user} asks to elevate` : "");
  event.waitUntil(
    self.registration.showNotification(title, { body, tag: payload.subject || payload.id, data: { link: payload.link || "/" } }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const link = (event.notification.data && event.notification.data.link) || "/";
  event.waitUntil(
    self.clients.matchAll({ type: "window" }).then((windows) => {
      const open = windows.find((w) => new URL(w.url).origin === self.location.origin);
      return open ? open.focus() : self.clients.openWindow(link);
    }),
  );
});
