// Coalition Sync through the generated Kotlin bindings, on the JVM, against a real relay.
//
// The same scenario as mobile/tests/test_bindings.py: two devices enroll with invites, edit
// offline, sync, and must end with each other's edits and the same report; a listener on the
// operator's background sync must hear a change the mine action centre makes. main() exits
// with 0 when every check holds, 1 otherwise. Run by mobile/tests/run.sh, which sets
// COALITION_SERVER (the coalition-server binary). Binds only to 127.0.0.1.
package org.coalitionsync.mobile.test

import java.io.File
import java.net.HttpURLConnection
import java.net.ServerSocket
import java.net.InetAddress
import java.net.URI
import java.nio.file.Files
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.coalitionsync.mobile.*

const val AS_OF = "2026-12-31"
const val SQUARE = """{"type":"Polygon","coordinates":[[[18.40,43.80],[18.41,43.80],[18.41,43.81],[18.40,43.81],[18.40,43.80]]]}"""
// Every wait is bounded: a hang is a failure, not a stuck CI run.
const val LIMIT_MS = 60_000L

val server: String = System.getenv("COALITION_SERVER") ?: error("set COALITION_SERVER")

fun check(condition: Boolean, message: () -> String) {
    if (!condition) throw AssertionError(message())
}

fun admin(data: File, vararg args: String): String {
    val p = ProcessBuilder(server, "admin", "--data", data.path, *args)
        .redirectError(ProcessBuilder.Redirect.INHERIT)
        .start()
    val out = p.inputStream.bufferedReader().readText().trim()
    check(p.waitFor(60, TimeUnit.SECONDS) && p.exitValue() == 0) { "admin ${args.toList()} failed" }
    return out
}

fun healthy(url: String): Boolean = try {
    val c = URI("$url/healthz").toURL().openConnection() as HttpURLConnection
    c.connectTimeout = 2000
    c.readTimeout = 2000
    c.responseCode == 200
} catch (e: java.io.IOException) {
    false
}

/** Starts the relay on a free port of 127.0.0.1: (process, url). */
fun startRelay(data: File, log: File): Pair<Process, String> {
    repeat(5) {
        val port = ServerSocket(0, 1, InetAddress.getByName("127.0.0.1")).use { it.localPort }
        val p = ProcessBuilder(server, "serve", "--listen", "127.0.0.1:$port", "--data", data.path)
            .redirectErrorStream(true)
            .redirectOutput(ProcessBuilder.Redirect.appendTo(log))
            .start()
        val url = "http://127.0.0.1:$port"
        val deadline = System.currentTimeMillis() + 30_000
        while (System.currentTimeMillis() < deadline && p.isAlive) {
            if (healthy(url)) return p to url
            Thread.sleep(50)
        }
        p.destroyForcibly().waitFor()
    }
    error("the relay did not start")
}

/** Collects what background sync reports; called on a library thread. */
class Listener : SyncListener {
    val changes = CopyOnWriteArrayList<DocumentChange>()
    val statuses = CopyOnWriteArrayList<SyncStatus>()
    override fun onDocumentChanged(change: DocumentChange) { changes.add(change) }
    override fun onSyncStatus(status: SyncStatus) { statuses.add(status) }
}

suspend fun waitFor(what: String, predicate: () -> Boolean) {
    val deadline = System.currentTimeMillis() + LIMIT_MS
    while (!predicate()) {
        check(System.currentTimeMillis() < deadline) { "timed out waiting for $what" }
        delay(50)
    }
}

suspend inline fun <reified E : CoalitionException> expectError(block: () -> Unit): E {
    try {
        block()
    } catch (e: CoalitionException) {
        if (e is E) return e
        throw AssertionError("expected ${E::class.simpleName}, got $e")
    }
    throw AssertionError("expected ${E::class.simpleName}")
}

suspend fun scenario(tmp: File, url: String, coalition: String, nmacInvite: String, operatorInvite: String) {
    val nmac = CoalitionClient.open(File(tmp, "bhmac-tablet").path)
    val operator = CoalitionClient.open(File(tmp, "npa-tablet").path)

    val refused = expectError<CoalitionException.InviteRefused> { operator.enroll(url, "inv-nope", null) }
    println("refused invite: ${refused.code}: ${refused.detail}")
    check(operator.identity() == null) { "a refused enrollment stored an identity" }

    val e1 = nmac.enroll(url, nmacInvite, "bhmac-tablet")
    check(e1.identity.org == "BHMAC" && e1.role == "nmac" && e1.coalitions == listOf(coalition)) { "nmac: $e1" }
    val e2 = operator.enroll(url, operatorInvite, "npa-tablet")
    check(e2.identity.org == "NPA" && e2.role == "operator") { "operator: $e2" }
    nmac.syncNow()
    operator.syncNow()
    val listed = nmac.coalitions()
    check(listed.map { it.id } == listOf(coalition) && listed[0].name == "BiH CCM coalition") { "$listed" }

    val areaId = nmac.addHazardArea(coalition, HazardAreaInput(
        code = "BA-HA-0001", name = "Brdo", adminArea = "Tuzla", geometry = SQUARE,
        hazardClass = HazardClass.CHA, baselineM2 = 12000, hazardTypes = listOf("submunitions"),
        priority = 3, status = AreaStatus.ACTIVE))
    nmac.syncNow()
    operator.syncNow()
    check(operator.hazardAreas(coalition).map { it.id } == listOf(areaId)) { "operator has the area" }

    val notAllowed = expectError<CoalitionException.NotAllowed> {
        operator.editHazardArea(coalition, areaId, HazardAreaChanges(priority = 1))
    }
    println("operator editing an area: ${notAllowed.detail}")
    val invalid = expectError<CoalitionException.Invalid> {
        operator.recordLandRelease(coalition, LandReleaseInput(
            areaId = areaId, method = ReleaseMethod.NTS, cancelledM2 = 0, reducedM2 = 0,
            clearedM2 = 500, items = mapOf(), dateOfInformation = "2026-11-20"))
    }
    check(invalid.field.startsWith("releases/") && invalid.field.endsWith("/cleared_m2")) { "$invalid" }

    // Offline on both devices.
    nmac.editHazardArea(coalition, areaId, HazardAreaChanges(priority = 1))
    nmac.setNarrative(coalition, NarrativeSection.SUMMARY, "Clear Brdo by 2027.")
    val entryId = operator.recordLandRelease(coalition, LandReleaseInput(
        areaId = areaId, method = ReleaseMethod.CLEARANCE, cancelledM2 = 0, reducedM2 = 0,
        clearedM2 = 4200, items = mapOf("submunitions" to 3L), dateOfInformation = "2026-11-20",
        location = "north slope"))
    operator.addComment(coalition, CommentKind.FIELD_NOTE, areaId, "Mud on the access road.")
    check(operator.status().unsentDocuments >= 2) { "operator has unsent documents" }

    nmac.syncNow()
    operator.syncNow()
    nmac.syncNow()

    check(operator.hazardAreas(coalition)[0].fields.priority == 1L) { "operator sees the priority edit" }
    val entries = nmac.landReleaseEntries(coalition)
    check(entries.map { it.id } == listOf(entryId) && entries[0].decision == null) { "nmac sees the entry: $entries" }
    var a = nmac.report(coalition, AS_OF)
    var b = operator.report(coalition, AS_OF)
    check(a.json == b.json && a == b) { "both devices must produce the same report" }
    check(a.pendingEntries == 1L && a.pendingM2 == 4200L && a.remainingChaM2 == 12000L) { "$a" }
    val history = operator.history(coalition, HistoryFilter(entityId = areaId))
    check(history.size >= 2 && history.all { it.org == "BHMAC" }) { "history: $history" }

    // Background sync on the operator's tablet while the mine action centre approves.
    val listener = Listener()
    check(operator.startBackgroundSync(listener)) { "background sync starts" }
    waitFor("background sync in sync") { listener.statuses.any { it.state == SyncState.IN_SYNC } }
    nmac.approveLandRelease(coalition, entryId, null, "2026-11-25")
    nmac.syncNow()
    waitFor("a remote change on the operator's tablet") {
        listener.changes.any { it.remote && it.kind == "plan" }
    }
    val remote = listener.changes.first { it.remote && it.kind == "plan" }
    println("callback: $remote")
    check(remote.coalitionId == coalition && remote.authors.any { "BHMAC" in it }) { "$remote" }
    b = operator.report(coalition, AS_OF)
    check(b.releasedM2 == 4200L && b.pendingEntries == 0L && b.remainingChaM2 == 7800L) { "$b" }

    check(operator.stopBackgroundSync()) { "background sync was running" }
    waitFor("background sync stopped") { listener.statuses.any { it.state == SyncState.STOPPED } }
    operator.syncNow()
    nmac.syncNow()
    a = nmac.report(coalition, AS_OF)
    b = operator.report(coalition, AS_OF)
    check(a.json == b.json) { "same report after background sync" }
    println("report: released ${a.releasedM2} m², remaining CHA ${a.remainingChaM2} m²")
    nmac.close()
    operator.close()
}

fun main() {
    val tmp = Files.createTempDirectory("coalition-kotlin").toFile()
    var relay: Process? = null
    val log = File(tmp, "relay.log")
    val ok = try {
        val data = File(tmp, "relay")
        val coalition = admin(data, "create-coalition", "--state", "BA", "--name", "BiH CCM coalition",
            "--org", "MCA-BA", "--org-name", "Ministry of Civil Affairs", "--user", "amra")
        val nmacInvite = admin(data, "invite", "--coalition", coalition, "--user", "dario",
            "--org", "BHMAC", "--org-name", "BH Mine Action Centre", "--role", "nmac")
        val operatorInvite = admin(data, "invite", "--coalition", coalition, "--user", "opal",
            "--org", "NPA", "--org-name", "Norwegian People's Aid", "--role", "operator")
        val (process, url) = startRelay(data, log)
        relay = process
        runBlocking { withTimeout(300_000) { scenario(tmp, url, coalition, nmacInvite, operatorInvite) } }
        true
    } catch (e: Throwable) {
        System.err.println("FAILED: $e")
        e.printStackTrace()
        if (log.exists()) System.err.println("--- relay log (tail)\n" + log.readLines().takeLast(40).joinToString("\n"))
        false
    } finally {
        relay?.destroy()
        relay?.waitFor(10, TimeUnit.SECONDS)
        tmp.deleteRecursively()
    }
    println(if (ok) "kotlin bindings: OK" else "kotlin bindings: FAILED")
    exitProcess(if (ok) 0 else 1)
}
