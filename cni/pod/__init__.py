"""The pod-netns side: what runs inside a pod's network namespace, and how it gets there.

`netns` enters a namespace; `runner` runs one job in a pod netns, in a forked worker or in this
process, behind one method; `applier` holds a pod's backend and runner and its two jobs.
"""
