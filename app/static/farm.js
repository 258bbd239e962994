// Refreshes the farm panel every 1.5 s. Each poll goes through the balancer, so the
// "served by" line below the table moves from instance to instance.
"use strict";
async function refreshFarm() {
  try {
    const response = await fetch("/api/farm", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(response.status);
    const farm = await response.json();
    const rows = farm.instances.map((i) => {
      const tr = document.createElement("tr");
      tr.className = i.up ? "up" : "down";
      for (const text of [i.name, i.up ? "up" : "down", String(i.requests)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    document.querySelector("#farm tbody").replaceChildren(...rows);
    document.getElementById("live-sessions").textContent = farm.live_sessions;
    document.getElementById("panel-served-by").textContent = farm.served_by;
    document.getElementById("farm-updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  } catch (err) {
    document.getElementById("farm-updated").textContent = "farm unreachable (" + err.message + ")";
  }
}
refreshFarm();
setInterval(refreshFarm, 1500);
