// Refreshes the farm panel every 1.5 s. Each poll goes through the balancer, so the
// "served by" line below the table moves from instance to instance.
// While the store refuses writes, no instance can write its heartbeat: a missing one then says
// nothing about the instance ("unknown"), and the panel names the store's state instead.
"use strict";
const STORE_STATES = {
  "full": "Session store full: it refuses writes (sign-ins, cart adds); reads and sign-outs still work.",
  "not persisting": "Session store cannot persist (disk): it refuses every write, sign-outs included; reads work.",
};
async function refreshFarm() {
  try {
    const response = await fetch("/api/farm", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(response.status);
    const farm = await response.json();
    const refusing = farm.store !== "ok";
    const rows = farm.instances.map((i) => {
      const tr = document.createElement("tr");
      const state = i.up ? "up" : refusing ? "unknown" : "down";
      tr.className = state;
      for (const text of [i.name, state === "unknown" ? "unknown (no heartbeat while the store refuses writes)" : state,
                          String(i.requests)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    document.querySelector("#farm tbody").replaceChildren(...rows);
    document.getElementById("live-sessions").textContent = farm.live_sessions;
    const store = document.getElementById("store-state");
    store.hidden = !refusing;
    store.textContent = refusing ? (STORE_STATES[farm.store] || "Session store: " + farm.store) : "";
    document.getElementById("panel-served-by").textContent = farm.served_by;
    document.getElementById("farm-updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  } catch (err) {
    document.getElementById("farm-updated").textContent = "farm unreachable (" + err.message + ")";
  }
}
refreshFarm();
setInterval(refreshFarm, 1500);
